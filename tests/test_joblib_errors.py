"""Bad input fails under "budgeted" exactly as under joblib's "loky".

Each case runs the same call under both backends, side by side, in this
process: the exception type must be loky's, and budgeted's message must start
with loky's full message (budgeted may add after it, never instead). Inputs
loky accepts must work under budgeted too, with the same results.

Deliberate differences (loky accepts a value and breaks only once an array is
memory-mapped, with an error naming nothing) are pinned in
``test_budgeted_refuses_up_front_what_loky_breaks_on_later``: loky's real
behaviour is asserted as well, so a joblib release that changes it is noticed.
"""

from __future__ import annotations

import concurrent.futures.process
import gc
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import psutil
import pytest
from joblib import Parallel, delayed, parallel_config

from budgeted import _compat

BACKENDS = ("loky", "budgeted")


def square(x, y=0):
    return x * x + y


def outcome(call):
    """``("ok", result)`` or ``(exception type, message)`` of ``call()``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. joblib's timeout warnings
            return "ok", call()
    except Exception as exc:  # noqa: BLE001 - the exception is the result
        return type(exc), str(exc)


def via_parallel(backend, tasks, **kwargs):
    return lambda: Parallel(backend=backend, **kwargs)(tasks())


def via_config(backend, tasks, **kwargs):
    def call():
        with parallel_config(backend, **kwargs):
            return Parallel()(tasks())

    return call


def squares():
    return [delayed(square)(i) for i in range(4)]


def assert_same_outcome(loky, ours) -> None:
    assert ours[0] is loky[0], (loky, ours)
    if loky[0] == "ok":
        assert ours[1] == loky[1]
    else:
        assert ours[1].startswith(loky[1]), (loky, ours)


def side_by_side(via, tasks=squares, **kwargs):
    """Run under loky then budgeted; assert the same outcome; return both."""
    loky, ours = (outcome(via(b, tasks, **kwargs)) for b in BACKENDS)
    assert_same_outcome(loky, ours)
    return loky, ours


#: Settings both ``Parallel(...)`` and ``parallel_config(...)`` take.
SHARED_SETTINGS = [
    {"n_jobs": 0},
    {"n_jobs": 0.5},  # int() makes it 0
    {"n_jobs": "2.3"},
    {"n_jobs": "four"},
    {"n_jobs": [2]},  # int()'s own TypeError
    {"n_jobs": 1.5},  # accepted: int() makes it 1
    {"n_jobs": -1.5},
    {"n_jobs": 2.0},
    {"n_jobs": "2"},
    {"n_jobs": True},
    {"n_jobs": None},
    {"n_jobs": -1},
    {"n_jobs": -(10**6)},  # all but a million CPUs: 1
    {"n_jobs": 2, "max_nbytes": "1Q"},
    {"n_jobs": 2, "max_nbytes": ""},
    {"n_jobs": 2, "max_nbytes": -3},  # accepted: everything is memory-mapped
    {"n_jobs": 2, "max_nbytes": "-1M"},
    {"n_jobs": 2, "max_nbytes": 1.5},
    {"n_jobs": 2, "prefer": "bogus"},
    {"n_jobs": 2, "require": "bogus"},
    {"n_jobs": 2, "prefer": "threads", "require": "bogus"},
]


@pytest.mark.parametrize("via", [via_parallel, via_config])
@pytest.mark.parametrize("settings", SHARED_SETTINGS, ids=repr)
def test_bad_setting_fails_as_under_loky(via, settings):
    side_by_side(via, **settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 0},
        {"batch_size": "big"},
        {"pre_dispatch": "bogus"},
        {"pre_dispatch": "n_jobs +"},
        {"return_as": "bogus"},
        {"verbose": "loud"},
    ],
    ids=repr,
)
def test_bad_parallel_argument_fails_as_under_loky(settings):
    loky, _ = side_by_side(via_parallel, n_jobs=2, **settings)
    assert loky[0] != "ok"  # these inputs really are refused


def test_backend_timeout_argument_fails_as_under_loky():
    loky, ours = side_by_side(via_config, n_jobs=2, timeout=5)
    assert loky[0] is ValueError and "idle_worker_timeout" in loky[1]
    assert ours[1] != loky[1]  # ours adds where Parallel(timeout=) is supported


@pytest.mark.parametrize("bad", [0, 0.5])
def test_effective_n_jobs_zero_fails_as_under_loky(bad):
    def call():
        return joblib.effective_n_jobs(bad)

    loky, ours = (outcome(_in_config(b, call)) for b in BACKENDS)
    if bad == 0:
        assert_same_outcome(loky, ours)
    else:  # loky returns 0.5 itself; ours refuses with loky's words for 0
        assert loky == ("ok", 0.5)
        assert ours[0] is ValueError
        assert ours[1].startswith("n_jobs == 0 in Parallel has no meaning")


def _in_config(backend, call, **config):
    def run():
        with parallel_config(backend, **config):
            return call()

    return run


def test_effective_n_jobs_of_a_bad_string_uses_parallels_words():
    """loky's own check trips on ``"four" < 0`` (TypeError); Parallel's words win."""
    loky = outcome(_in_config("loky", lambda: joblib.effective_n_jobs("four")))
    ours = outcome(_in_config("budgeted", lambda: joblib.effective_n_jobs("four")))
    assert loky[0] is TypeError
    parallels = outcome(via_parallel("loky", squares, n_jobs="four"))
    assert ours[0] is parallels[0] is ValueError
    assert ours[1].startswith(parallels[1])


def test_missing_temp_folder_is_created_as_under_loky(tmp_path):
    a = np.ones(10_000)

    def tasks():
        return [delayed(np.sum)(a) for _ in range(3)]

    for backend in BACKENDS:
        folder = tmp_path / backend / "not" / "yet"
        call = via_parallel(
            backend, tasks, n_jobs=2, max_nbytes=100, temp_folder=str(folder)
        )
        assert outcome(call) == ("ok", [10_000.0] * 3)
        assert folder.is_dir()
        assert list(folder.iterdir()) == []  # the call's own folder is gone


def _array_tasks():
    a = np.ones(10_000)
    return [delayed(np.sum)(a) for _ in range(3)]


@pytest.mark.parametrize(
    "setting, loky_type, ours_type, ours_words",
    [
        ({"max_nbytes": [1]}, pickle.PicklingError, TypeError, "max_nbytes must"),
        (
            {"mmap_mode": "x"},
            concurrent.futures.process.BrokenProcessPool,
            ValueError,
            "mmap_mode must be one of",
        ),
        ({"temp_folder": "FILE"}, pickle.PicklingError, NotADirectoryError, "FILE"),
    ],
    ids=["max_nbytes=[1]", "mmap_mode='x'", "temp_folder=a file"],
)
def test_budgeted_refuses_up_front_what_loky_breaks_on_later(
    setting, loky_type, ours_type, ours_words, tmp_path
):
    """Without a large array loky runs these; with one, it fails naming nothing."""
    if setting.get("temp_folder") == "FILE":
        a_file = tmp_path / "a_file"
        a_file.write_text("")
        setting = {"temp_folder": str(a_file)}
        ours_words = f"temp_folder {str(a_file)!r} is not a directory"
    fresh = {"idle_worker_timeout": 301}  # a fresh loky pool: it reads temp_folder
    settings = {"n_jobs": 2, "max_nbytes": 100, **setting, **fresh}
    assert outcome(via_parallel("loky", squares, **settings))[0] == "ok"
    loky = outcome(via_parallel("loky", _array_tasks, **settings))
    assert issubclass(loky[0], loky_type)
    ours = outcome(via_parallel("budgeted", squares, **settings))
    assert ours[0] is ours_type
    assert ours_words in ours[1]


# -- Parallel(timeout=...): joblib's TimeoutError, in both modes --------------------
def wait_for(path: str, x):
    """Wait (at most 5 s, far beyond the 0.5 s timeout) until ``path`` exists.

    Threads cannot be stopped: a thread-mode call that timed out ends when
    its running tasks do, as under joblib's threading backend.
    """
    deadline = time.monotonic() + 5
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


@pytest.mark.parametrize("prefer", ["processes", "threads"])
def test_parallel_timeout_raises_joblibs_timeout_error(prefer, tmp_path):
    seen = {}
    for backend in BACKENDS:
        release = str(tmp_path / f"release-{backend}")
        call = via_parallel(
            backend,
            lambda release=release: [delayed(wait_for)(release, i) for i in range(3)],
            n_jobs=2,
            timeout=0.5,
            prefer=prefer,
        )
        seen[backend] = outcome(call)
        Path(release).touch()  # tasks still waiting (threads) finish now
    assert seen["loky"][0] is multiprocessing.TimeoutError
    assert_same_outcome(seen["loky"], seen["budgeted"])
    ok = via_parallel("budgeted", squares, n_jobs=2, timeout=60, prefer=prefer)
    assert outcome(ok) == ("ok", [0, 1, 4, 9])


# -- real workers: crashes, unpicklable tasks, task exceptions ------------------------
def exit_in(x, how):
    if x == 1:
        if how == "os._exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize("how, code", [("os._exit", "EXIT(3)"), ("SIGKILL", "-9")])
def test_worker_crash_keeps_lokys_message_first(how, code):
    def tasks():
        return [delayed(exit_in)(i, how) for i in range(3)]

    loky, ours = side_by_side(via_parallel, tasks, n_jobs=2)
    assert loky[0] is _compat.TerminatedWorkerError
    assert code in loky[1]
    assert "exit_in(" in ours[1][len(loky[1]) :]  # a batch that was lost
    assert outcome(via_parallel("budgeted", squares, n_jobs=2)) == ("ok", [0, 1, 4, 9])


@pytest.mark.parametrize(
    "task, named",
    [
        (delayed(square)(threading.Lock()), "argument 0 of square"),
        (delayed(square)(1, y=threading.Lock()), "argument 'y' of square"),
    ],
)
def test_unpicklable_task_keeps_lokys_message_first(task, named):
    loky, ours = side_by_side(
        via_parallel, lambda: [delayed(square)(1), task], n_jobs=2
    )
    assert loky[0] is pickle.PicklingError
    assert named in ours[1][len(loky[1]) :]


def _cannot_load():
    raise ValueError("this argument cannot be loaded")


class LoadsBadly:
    """Pickles fine; fails when a worker loads it."""

    def __reduce__(self):
        return _cannot_load, ()


def test_a_task_that_cannot_be_loaded_keeps_lokys_type_and_words():
    """budgeted loads a batch in its worker only once it holds its CPUs; a
    failure there is still loky's ``BrokenProcessPool`` with loky's words,
    naming the cause after them; the next call runs."""

    def tasks():
        return [delayed(square)(1), delayed(square)(LoadsBadly())]

    loky, ours = side_by_side(via_parallel, tasks, n_jobs=2)
    assert loky[0] is _compat.BrokenProcessPool
    assert "this argument cannot be loaded" in ours[1][len(loky[1]) :]
    assert outcome(via_parallel("budgeted", squares, n_jobs=2)) == ("ok", [0, 1, 4, 9])


class TwoArgError(Exception):
    """An exception that cannot be rebuilt from its args (loky cannot unpickle it)."""

    def __init__(self, a, b):
        super().__init__(a)


def raise_in(x, kind):
    if x == 2:
        raise {"key": KeyError, "value": ValueError}.get(kind, TwoArgError)("x", 1)
    return x


@pytest.mark.parametrize("kind", ["key", "value", "two-args"])
@pytest.mark.parametrize("prefer", ["processes", "threads"])
def test_task_exception_type_and_message_as_under_joblib(kind, prefer):
    """budgeted honours ``prefer="threads"`` (loky ignores it when named):
    in thread mode the reference is joblib's ``threading`` backend."""

    def tasks():
        return [delayed(raise_in)(i, kind) for i in range(4)]

    reference = "loky" if prefer == "processes" else "threading"
    theirs = outcome(via_parallel(reference, tasks, n_jobs=2, prefer=prefer))
    ours = outcome(via_parallel("budgeted", tasks, n_jobs=2, prefer=prefer))
    assert_same_outcome(theirs, ours)
    assert theirs[0] != "ok"


# -- an abandoned generator: no error, nothing left, workers usable ------------------
def board_files() -> list[str]:
    mine = f"budgeted-board-{os.getpid()}-"
    return [n for n in os.listdir("/dev/shm") if n.startswith(mine)]


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_abandoned_generator_leaves_nothing(backend, return_as, tmp_path):
    memmaps = tmp_path / "memmaps"
    memmaps.mkdir()
    a = np.ones(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # joblib: tasks cancelled
        gen = Parallel(
            backend=backend,
            n_jobs=2,
            return_as=return_as,
            max_nbytes="1K",
            temp_folder=str(memmaps),
        )(delayed(np.sum)(a * i) for i in range(200))
        first = [next(gen) for _ in range(3)]
        del gen
        gc.collect()
    assert len(first) == 3
    assert outcome(via_parallel(backend, squares, n_jobs=2)) == ("ok", [0, 1, 4, 9])
    assert list(memmaps.iterdir()) == []
    assert board_files() == []
    children = psutil.Process().children(recursive=True)
    workers = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) <= 2


ABANDON_MANY = """
import gc, random, sys, warnings
import numpy as np
import budgeted
from joblib import Parallel, delayed

random.seed(0)
for k in range(int(sys.argv[2])):
    a = np.ones(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # joblib: tasks cancelled
        gen = Parallel(
            backend="budgeted", n_jobs=2, return_as="generator",
            max_nbytes="1K", temp_folder=sys.argv[1],
        )(delayed(np.sum)(a * i) for i in range(200))
        first = [next(gen) for _ in range(random.randint(1, 6))]
        del gen
        gc.collect()
print("done")
"""


def test_abandoned_generators_leave_no_file_and_no_registration(tmp_path):
    """loky's feeder thread outlives a killed executor and goes on pickling
    the tasks it had buffered: no array may be dumped after (or during) the
    cleanup. A dump then either recreated the folder or left a file the
    resource tracker reports as leaked when the program exits. Many abandoned
    calls in a row, as the race needs several tries to show."""
    memmaps = tmp_path / "memmaps"
    memmaps.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", ABANDON_MANY, str(memmaps), "40"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "leaked" not in done.stderr, done.stderr[-2000:]
    assert list(memmaps.iterdir()) == []
