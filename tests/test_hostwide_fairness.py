"""Programs sharing host tokens converge to equal shares of the CPUs.

Program A runs long tasks without end (until the test stops it); program B,
started once A holds every token, runs short ones. Both use ``n_jobs=-1``
planning for 2 CPUs, on a ledger of 2 tokens or under ``python -m budgeted
run -j 2``, ``batch_size=1``. Tasks sleep, so what they get is what the queue
decides, not what a loaded machine allows. Without a queue, A's workers take
back the token they give up at the end of a task before B's waiting workers
look; with turns by ticket alone, B got one short task per long task of A
(a tenth of the CPU time); with the program holding the fewest CPUs served
first, B holds one of the two CPUs while it runs.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from _hostwide import BUDGETED_RUN, PYTHON, clean_env, run
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

    log, name, tasks, stop, mode, seconds = sys.argv[1:]

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
    with parallel_config("budgeted", n_cpus=2, prefer=mode):
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
