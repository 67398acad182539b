"""Programs sharing host tokens converge to equal shares of the CPUs.

Program A runs long tasks without end (until the test stops it); program B,
started once A holds every token, runs short ones. Both use ``n_jobs=-1``
planning for 2 CPUs, on a ledger of 2 tokens or under ``python -m budgeted
run -j 2``, ``batch_size=1``. Tasks sleep, so what they get is what the queue
decides, not what a loaded machine allows. Without a queue, A's workers take
back the token they give up at the end of a task before B's waiting workers
look; with turns by ticket alone, B got one short task per long task of A
(a tenth of the CPU time); with the program holding the fewest CPUs served
first, B holds one of the two CPUs while it runs. Under ``make -j4`` the two
programs are two recipes and plan for 3 CPUs (see :data:`MAKE_JOBS`).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from _hostwide import BUDGETED_RUN, MAKE, PYTHON, clean_env, run
from _token_program import max_together

#: A task of A, of B (seconds): with turns by batch, B would get 1/11 of the time
A_SECONDS, B_SECONDS = 0.5, 0.05
B_TASKS = 24

_PROGRAM = textwrap.dedent(
    """
    import itertools, json, os, sys, threading, time
    from pathlib import Path
    import budgeted
    from joblib import Parallel, delayed, parallel_config

    log, name, tasks, stop, mode, seconds, n_cpus = sys.argv[1:]

    def task(i):
        start = time.monotonic()
        time.sleep(float(seconds))
        worker = f"{os.getpid()}-{threading.get_ident()}"  # process, thread
        record = {"name": name, "worker": worker, "start": start,
                  "end": time.monotonic(), "budget": budgeted.current_budget()}
        with open(Path(log) / f"{name}.jsonl", "a") as out:
            out.write(json.dumps(record) + "\\n")

    def numbers():
        for i in itertools.count():
            if i == int(tasks) or os.path.exists(stop):
                return
            yield i

    # B's tasks are all sent at once: a B worker that ends a task finds its
    # next one waiting, and starts to wait for a token without a round trip
    # to its parent (which, on a loaded machine, would let A start tasks
    # before B is even in the queue)
    dispatch = "all" if int(tasks) < 100 else "2 * n_jobs"
    with parallel_config("budgeted", n_cpus=int(n_cpus), prefer=mode):
        Parallel(n_jobs=-1, batch_size=1, pre_dispatch=dispatch)(
            delayed(task)(i) for i in numbers()
        )
    """
)


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _share_of_b(a: list[dict], b: list[dict]) -> float:
    """B's share of the task time of both programs from B's first task start
    to its last task end (A's tasks cut at the edges)."""
    first, last = min(r["start"] for r in b), max(r["end"] for r in b)
    b_time = sum(r["end"] - r["start"] for r in b)
    a_time = sum(max(0.0, min(r["end"], last) - max(r["start"], first)) for r in a)
    return b_time / (a_time + b_time)


_DRIVER = (
    textwrap.dedent(
        """
    import subprocess, sys, time
    from pathlib import Path

    script, log, stop, mode = sys.argv[1:]

    def start(name, tasks, seconds):
        words = [sys.executable, script, log, name, str(tasks), stop, mode, seconds]
        words.append("2")  # planned CPUs
        return subprocess.Popen(words)

    a = start("a", 10**6, "A_SECONDS")
    try:
        deadline = time.monotonic() + 60
        path = Path(log) / "a.jsonl"
        while not path.exists() or len(path.read_text().splitlines()) < 2:
            assert a.poll() is None and time.monotonic() < deadline, "A stalled"
            time.sleep(0.02)  # A holds every token
        assert start("b", B_TASKS, "B_SECONDS").wait(timeout=60) == 0
        Path(stop).touch()
        assert a.wait(timeout=60) == 0
    finally:
        a.kill()
    """
    )
    .replace("A_SECONDS", repr(A_SECONDS))
    .replace("B_SECONDS", repr(B_SECONDS))
)
_DRIVER = _DRIVER.replace("B_TASKS", str(B_TASKS))


@pytest.mark.parametrize("mode", ["processes", "threads"])
@pytest.mark.parametrize("where", ["ledger", "budgeted run -j 2"])
def test_programs_with_long_and_short_tasks_share_the_cpus(tmp_path, where, mode):
    ledger, log = tmp_path / "ledger", tmp_path / "log"
    ledger.mkdir(mode=0o700)
    log.mkdir()
    script, driver = tmp_path / "program.py", tmp_path / "driver.py"
    script.write_text(_PROGRAM)
    driver.write_text(_DRIVER)
    words = [PYTHON, str(driver), str(script), str(log), str(tmp_path / "stop"), mode]
    if where == "ledger":
        done = run(words, clean_env(BUDGETED_LEDGER=str(ledger)))
    else:
        words = [*BUDGETED_RUN, "-j", "2", "--", *words]
        done = run(words, clean_env(BUDGETED_LEDGER="off"))
    assert done.returncode == 0, done.stderr
    records_a, records_b = _records(log / "a.jsonl"), _records(log / "b.jsonl")
    assert len(records_b) == B_TASKS
    assert max_together(records_a + records_b, "budget") <= 2
    # equal shares: 0.5 (with turns by batch alone, 0.09)
    assert _share_of_b(records_a, records_b) > 0.35


#: Under make, every recipe owns an implicit CPU: with ``make -j4``, A's and
#: B's recipes own one each and 2 bytes are in the pipe, both A's (planning 3
#: CPUs) until B comes. Without a queue A's workers take back most bytes they
#: give up (B's share measured 0.29-0.34); with one, each program holds 2.
MAKE_JOBS = 4

_WAIT_FOR_A = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    path, lines = Path(sys.argv[1]), int(sys.argv[2])
    deadline = time.monotonic() + 60
    while not path.exists() or len(path.read_text().splitlines()) < lines:
        if time.monotonic() > deadline:
            sys.exit("A stalled")
        time.sleep(0.02)
    """
)


@pytest.mark.skipif(not Path(MAKE).exists(), reason="needs GNU make")
@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_programs_under_one_make_share_the_pipes_tokens(tmp_path, mode):
    log, stop = tmp_path / "log", tmp_path / "stop"
    log.mkdir()
    script, wait_for_a = tmp_path / "program.py", tmp_path / "wait_for_a.py"
    script.write_text(_PROGRAM)
    wait_for_a.write_text(_WAIT_FOR_A)
    n_cpus = MAKE_JOBS - 1
    a = f"{PYTHON} {script} {log} a {10**6} {stop} {mode} {A_SECONDS} {n_cpus}"
    b = f"{PYTHON} {script} {log} b {4 * B_TASKS} {stop} {mode} {B_SECONDS} {n_cpus}"
    # B starts once A ran a full round of tasks, holding every byte, and
    # runs long enough for A's long tasks to end and the shares to settle;
    # A stops once B is done, whatever happened to B
    b = f"{PYTHON} {wait_for_a} {log / 'a.jsonl'} {n_cpus} && {b}"
    makefile = f"all: a b\na:\n\t+@{a}\nb:\n\t+@{b}; s=$$?; touch {stop}; exit $$s\n"
    (tmp_path / "Makefile").write_text(makefile)
    env = clean_env(BUDGETED_LEDGER="off")
    done = run([MAKE, f"-j{MAKE_JOBS}", "-s"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records_a, records_b = _records(log / "a.jsonl"), _records(log / "b.jsonl")
    assert len(records_b) == 4 * B_TASKS
    assert max_together(records_a + records_b, "budget") <= MAKE_JOBS
    # equal shares: measured 0.45-0.46 (0.29-0.34 without a queue)
    assert _share_of_b(records_a, records_b) > 0.39
    assert not list(_queue_folders()), "a transient queue folder was left behind"


def _queue_folders():
    from budgeted.hostwide.jobserver import QUEUE_PREFIX
    from budgeted.hostwide.ledger import default_folder

    folder = default_folder()
    return folder.glob(f"{QUEUE_PREFIX}*") if folder.is_dir() else iter(())
