"""Programs sharing host tokens take turns: a waiting program goes first.

Program A runs tasks without end (until the test stops it); program B, started
once A holds every token, runs a few. Both use ``n_jobs=-1`` planning for 2
CPUs, on a ledger of 2 tokens or under ``python -m budgeted run -j 2``, tasks
of 50 ms, ``batch_size=1``. Without a queue, A's workers take back the token
they give up at the end of a task before B's waiting workers look, and B
waits for many of A's tasks; with the queue (the ledger's, the
server's), a program that waits is served before any program that comes later.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from _hostwide import BUDGETED_RUN, PYTHON, clean_env, run
from _token_program import max_together

SECONDS = 0.05

_PROGRAM = textwrap.dedent(
    """
    import itertools, json, os, sys, threading, time
    from pathlib import Path
    import budgeted
    from joblib import Parallel, delayed, parallel_config

    log, name, tasks, stop, mode = sys.argv[1:]

    def task(i):
        start = time.monotonic()
        time.sleep(SECONDS)
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
).replace("SECONDS", repr(SECONDS))


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _starts_inside_waits(a: list[dict], b: list[dict]) -> list[int]:
    """For each wait of a B worker between two of its tasks: A's task starts
    inside it."""
    counts = []
    for worker in {r["worker"] for r in b}:
        mine = sorted((r for r in b if r["worker"] == worker), key=lambda r: r["start"])
        for before, after in zip(mine, mine[1:], strict=False):
            gap = (before["end"], after["start"])
            counts.append(sum(gap[0] < r["start"] < gap[1] for r in a))
    return counts


_DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path

    script, log, stop, mode = sys.argv[1:]

    def start(name, tasks):
        words = [sys.executable, script, log, name, str(tasks), stop, mode]
        return subprocess.Popen(words)

    a = start("a", 10**6)
    try:
        deadline = time.monotonic() + 60
        path = Path(log) / "a.jsonl"
        while not path.exists() or len(path.read_text().splitlines()) < 4:
            assert a.poll() is None and time.monotonic() < deadline, "A stalled"
            time.sleep(0.02)  # A holds every token
        assert start("b", 12).wait(timeout=60) == 0
        Path(stop).touch()
        assert a.wait(timeout=60) == 0
    finally:
        a.kill()
    """
)


@pytest.mark.parametrize("mode", ["processes", "threads"])
@pytest.mark.parametrize("where", ["ledger", "budgeted run -j 2"])
def test_a_waiting_program_is_served_before_a_later_taker(tmp_path, where, mode):
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
    assert len(records_b) == 12
    assert max_together(records_a + records_b, "budget") <= 2
    counts = _starts_inside_waits(records_a, records_b)
    assert counts, "B's workers never had to wait: A did not hold the tokens"
    # A has two workers, each waiting at most once ahead of a B worker
    assert max(counts) <= 3, counts
