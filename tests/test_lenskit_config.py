"""budgeted.lenskit without worker processes: config, WorkChunks, progress."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
from threadpoolctl import threadpool_info

from budgeted.lenskit import (
    InvokeProgress,
    ParallelConfig,
    WorkChunks,
    get_parallel_config,
    initialize,
    invoke_progress,
    invoker,
)
from budgeted.lenskit.config import (
    ENV_VARS,
    child_threads_for,
    resolve_config,
)

KNOBS = list(ENV_VARS)

# torch may be imported by other test modules, its inter-op pool already set:
# initialize() then warns that it cannot change it (tested in a fresh process).
pytestmark = [
    pytest.mark.filterwarnings("ignore:could not set torch inter-op threads"),
    pytest.mark.usefixtures("fresh_lenskit_config"),  # see conftest
]


def blas_threads() -> int:
    return next(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


# --- configuration -------------------------------------------------------


@pytest.mark.parametrize(
    "ncpu, expected",
    [(1, (1, 1, 1, 1)), (2, (2, 2, 1, 1)), (6, (4, 6, 1, 1)), (16, (4, 8, 2, 4))],
)
def test_defaults_follow_the_usable_cpus(ncpu, expected):
    assert resolve_config(environ={}, ncpu=ncpu) == ParallelConfig(*expected)


def test_derived_defaults_use_the_resolved_processes_and_threads():
    environ = {"LK_NUM_PROCS": "8", "LK_NUM_THREADS": "2"}
    config = resolve_config(environ=environ, ncpu=16)
    assert config == ParallelConfig(8, 2, 4, 2)  # 16 // 2 capped at 4; 16 // 8


@pytest.mark.parametrize("knob", KNOBS)
def test_argument_beats_environment_beats_default(knob):
    default = resolve_config(environ={}, ncpu=16)._asdict()[knob]
    from_env = resolve_config(environ={ENV_VARS[knob]: "3"}, ncpu=16)
    assert from_env._asdict()[knob] == 3 != default
    from_arg = resolve_config(**{knob: 5}, environ={ENV_VARS[knob]: "3"}, ncpu=16)
    assert from_arg._asdict()[knob] == 5


@pytest.mark.parametrize("knob", KNOBS)
@pytest.mark.parametrize("raw", ["abc", "0", "-2", "1.5"])
def test_bad_environment_value_names_the_variable(knob, raw):
    with pytest.raises(ValueError, match=f"{ENV_VARS[knob]}.*{raw!r}"):
        resolve_config(environ={ENV_VARS[knob]: raw}, ncpu=4)


def test_empty_environment_value_means_unset_but_blanks_raise_as_in_lenskit():
    # LensKit: ``if processes is None and nprocs: processes = int(nprocs)``
    assert resolve_config(environ={"LK_NUM_PROCS": ""}, ncpu=2).processes == 2
    with pytest.raises(ValueError, match="^invalid literal for int"):
        resolve_config(environ={"LK_NUM_PROCS": " "}, ncpu=2)


@pytest.mark.parametrize("knob", KNOBS)
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_bad_argument_names_the_parameter(knob, value):
    with pytest.raises(ValueError, match=f"{knob} must be a positive integer"):
        initialize(**{knob: value})
    assert initialize(processes=2, child_threads=1).processes == 2  # still usable


def test_initialize_reads_the_environment_and_the_usable_cpus(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")  # usable_cpus() == 1
    monkeypatch.setenv("LK_NUM_CHILD_THREADS", "3")
    assert initialize() == ParallelConfig(1, 1, 1, 3)
    assert get_parallel_config() == ParallelConfig(1, 1, 1, 3)


def test_bad_environment_leaves_the_config_uninitialized(monkeypatch):
    monkeypatch.setenv("LK_NUM_PROCS", "many")
    with pytest.raises(ValueError, match="LK_NUM_PROCS"):
        initialize()
    monkeypatch.setenv("LK_NUM_PROCS", "2")
    assert get_parallel_config().processes == 2


def test_initialize_limits_this_process_blas_pool():
    config = initialize(processes=2, threads=1, backend_threads=3, child_threads=1)
    assert config == ParallelConfig(2, 1, 3, 1)
    assert blas_threads() == 3  # what OpenBLAS itself reports


def test_second_initialize_warns_and_changes_nothing():
    first = initialize(processes=2, threads=1, backend_threads=3, child_threads=1)
    with pytest.warns(RuntimeWarning, match="already initialized"):
        second = initialize(processes=4, backend_threads=2)
    assert second == first == get_parallel_config()
    assert blas_threads() == 3


def test_get_parallel_config_initializes_once(monkeypatch):
    monkeypatch.setenv("LK_NUM_PROCS", "3")
    assert get_parallel_config().processes == 3
    monkeypatch.setenv("LK_NUM_PROCS", "4")  # too late: already initialized
    assert get_parallel_config().processes == 3


def test_initialize_sets_torch_pools_in_a_fresh_process():
    # torch's inter-op pool can be set once per process: observe in a new one.
    code = textwrap.dedent(
        """
        import warnings
        import torch
        from budgeted.lenskit import initialize
        from budgeted.lenskit.config import replace_config
        initialize(processes=1, threads=5, backend_threads=3, child_threads=1)
        print(torch.get_num_interop_threads(), torch.get_num_threads())
        replace_config(None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            initialize(processes=1, threads=4, backend_threads=1, child_threads=1)
        print(torch.get_num_interop_threads(), torch.get_num_threads())
        print(caught[0].message)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[:2] == ["5 3", "5 1"]  # inter-op threads can be set only once
    assert lines[2].startswith("could not set torch inter-op threads to 4")


def test_more_jobs_than_configured_get_the_default_share_for_them(monkeypatch):
    monkeypatch.setattr("budgeted.lenskit.config.usable_cpus", lambda: 6)
    assert initialize(processes=1, threads=1).child_threads == 4  # min(6 // 1, 4)
    assert child_threads_for(1) == 4
    assert child_threads_for(3) == 2  # not 3 x 4 threads on 6 CPUs
    assert child_threads_for(12) == 1


@pytest.mark.parametrize("how", ["argument", "variable"])
def test_given_child_threads_hold_for_any_number_of_jobs(monkeypatch, how):
    monkeypatch.setattr("budgeted.lenskit.config.usable_cpus", lambda: 6)
    if how == "variable":
        monkeypatch.setenv("LK_NUM_CHILD_THREADS", "4")
        initialize(processes=1, threads=1)
    else:
        initialize(processes=1, threads=1, child_threads=4)
    assert child_threads_for(3) == 4


# --- WorkChunks ----------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, (0, 0, 1)),
        (99, (99, 99, 1)),
        (100, (100, 100, 1)),
        (250_000, (250_000, 250, 1000)),
        (10**7, (10**7, 4000, 2500)),
        (100_001, (100_001, 100, 1001)),
    ],
)
def test_work_chunks_values(n, expected):
    chunks = WorkChunks.create(n)
    assert chunks == expected
    assert (chunks.total, chunks.chunk_size, chunks.chunk_count) == expected


@pytest.mark.parametrize("n", [1, 99, 100, 1234, 250_000])
def test_work_chunk_ranges_cover_every_item_once(n):
    chunks = WorkChunks.create(n)
    items = [i for r in chunks.ranges() for i in r]
    assert items == list(range(n))
    assert len(list(chunks.ranges())) == chunks.chunk_count
    with pytest.raises(IndexError, match="index must be in range"):
        chunks.chunk(chunks.chunk_count)


@pytest.mark.parametrize("n", [-1, 2.0, "10", None, True])
def test_work_chunks_reject_bad_counts(n):
    with pytest.raises(ValueError, match="njobs must be a non-negative integer"):
        WorkChunks.create(n)


# --- progress ------------------------------------------------------------


def square(model, x):
    return model * x * x


def test_progress_bar_total_from_the_input_length():
    initialize(processes=1, child_threads=1)
    with invoke_progress(label="squares", bar=True) as progress:
        with invoker(2, square, progress=progress) as inv:
            results = inv.map(range(25))
            assert progress.total == 25 and progress.tqdm.total == 25  # up front
            assert progress.n == 0
            assert list(results) == [2 * x * x for x in range(25)]
        assert progress.n == progress.tqdm.n == 25


def test_progress_without_length_counts_items():
    initialize(processes=1, child_threads=1)
    progress = invoke_progress(bar=True)
    with invoker(1, square, progress=progress) as inv:
        list(inv.map(x for x in range(7)))
    assert progress.total is None and progress.n == 7
    progress.close()


def test_progress_true_makes_a_bar_closed_at_shutdown():
    initialize(processes=1, child_threads=1)
    inv = invoker(1, square, progress=True)
    list(inv.map(range(4)))
    assert inv.progress.tqdm.n == 4 and not inv.progress.tqdm.disable
    inv.shutdown()
    assert inv.progress._closed


def test_progress_is_logged_without_tqdm(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    caplog.set_level(logging.INFO, logger="budgeted.lenskit.progress")
    initialize(processes=1, child_threads=1)
    with invoke_progress(label="squares") as progress:
        assert progress.tqdm is None
        with invoker(1, square, progress=progress) as inv:
            list(inv.map(range(12)))
    assert caplog.messages[-1] == "squares: 12/12 items (done)"


def test_bar_required_without_tqdm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"budgeted\[lenskit\]"):
        InvokeProgress(bar=True)


# --- in-process invoker and bad input ------------------------------------


def test_one_job_runs_lazily_in_the_caller():
    import os

    initialize(processes=4, child_threads=1)
    calls = []

    def func(model, x):
        calls.append(os.getpid())
        return model + x

    with invoker(10, func, n_jobs=1) as inv:
        results = inv.map([1, 2, 3])
        assert calls == []  # nothing runs until results are requested
        assert next(results) == 11 and calls == [os.getpid()]
        assert list(results) == [12, 13]
    assert calls == [os.getpid()] * 3


def test_map_takes_several_iterables_and_stops_at_the_shortest():
    initialize(processes=1, child_threads=1)
    with invoker(1, lambda m, a, b: m + a * b, n_jobs=1) as inv:
        assert list(inv.map([1, 2, 3], [10, 20])) == [11, 41]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_jobs": 0}, ValueError, "n_jobs"),
        ({"n_jobs": "2"}, ValueError, "n_jobs"),
        ({"n_jobs": 1.5}, ValueError, "n_jobs"),
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"progress": "yes"}, TypeError, "progress"),
        ({"func": 3}, TypeError, "func must be callable"),
    ],
)
def test_bad_invoker_arguments(kwargs, error, match):
    initialize(processes=1, child_threads=1)
    arguments = {"model": 1, "func": square, **kwargs}
    with pytest.raises(error, match=match):
        invoker(**arguments)


def test_import_needs_neither_tqdm_nor_torch():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["tqdm"] = sys.modules["torch"] = None  # not installed
        import budgeted
        assert "budgeted.lenskit" not in sys.modules  # not imported eagerly
        import budgeted.lenskit as lk
        lk.initialize(processes=1, child_threads=1)
        with lk.invoker(3, lambda m, x: m * x, progress=True) as inv:
            print(list(inv.map([1, 2])), inv.progress.tqdm)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["[3,", "6]", "None"]


# --- log forwarding, without worker processes ----------------------------


def test_forwarder_survives_a_bad_handshake_and_drains_before_close(caplog):
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    from budgeted.lenskit.logs import LogForwarder

    caplog.set_level(logging.INFO, logger="lk.forwarded")
    forwarder = LogForwarder()
    assert forwarder.setup.levels["lk.forwarded"] == logging.INFO  # for workers
    with pytest.raises(AuthenticationError):
        Client(forwarder.setup.address, authkey=b"not the key")
    conn = Client(forwarder.setup.address, authkey=forwarder.setup.authkey)
    for level, text in [(logging.INFO, "kept"), (logging.DEBUG, "dropped")]:
        record = logging.LogRecord("lk.forwarded", level, __file__, 1, text, (), None)
        record.process = 123456
        conn.send(dict(record.__dict__))
    conn.close()
    forwarder.close()  # returns once the reader has handled everything
    forwarded = [r for r in caplog.records if r.name == "lk.forwarded"]
    assert [(r.getMessage(), r.process) for r in forwarded] == [("kept", 123456)]


def test_config_module_still_exports_what_moved_to_knobs():
    import importlib

    from budgeted.lenskit import config, knobs, opinvoker, poolinvoker

    invoker = importlib.import_module("budgeted.lenskit.invoker")  # not the function

    for name in ("ENV_VARS", "ArgumentTypeError", "ParallelConfig", "resolve_config"):
        assert getattr(config, name) is getattr(knobs, name)
    assert config.config_from_object is knobs.config_from_object
    assert invoker.ModelOpInvoker is opinvoker.ModelOpInvoker
    assert invoker.InProcessOpInvoker is opinvoker.InProcessOpInvoker
    assert invoker.ProcessPoolOpInvoker is poolinvoker.ProcessPoolOpInvoker


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_bad_chunksize_names_it(value):
    initialize(processes=1, child_threads=1)
    with pytest.raises(
        ValueError, match=f"^chunksize must be a positive integer, got {value!r}$"
    ):
        invoker(1, square, n_jobs=1, chunksize=value)
