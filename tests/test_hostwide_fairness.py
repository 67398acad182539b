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
programs are two recipes and plan for 3 CPUs (see :data:`MAKE_JOBS`). Three
programs on 3 tokens get a third each (turns by ticket alone: 0.75 for A,
0.09-0.12 for the others); a program that sees fewer CPUs than the ledger
has gets those it can use.
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
    window = min(r["start"] for r in b), max(r["end"] for r in b)
    return _shares([a, b], window)[1]


def _shares(programs: list[list[dict]], window: tuple[float, float]) -> list[float]:
    """Each program's share of the task time inside ``window`` (tasks cut at
    its edges)."""
    times = [sum(_busy(r, window) for r in records) for records in programs]
    return [time / sum(times) for time in times]


_DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path

    # a program: "name,tasks,seconds,planned CPUs"
    script, log, stop, mode, first, *later = sys.argv[1:]

    def start(spec):
        name, tasks, seconds, n_cpus = spec.split(",")
        words = [script, log, name, tasks, stop, mode, seconds, n_cpus]
        return subprocess.Popen([sys.executable, *words])

    name, _, _, n_cpus = first.split(",")
    a, others = start(first), []
    try:
        deadline = time.monotonic() + 60
        path = Path(log) / f"{name}.jsonl"
        while not path.exists() or len(path.read_text().splitlines()) < int(n_cpus):
            assert a.poll() is None and time.monotonic() < deadline, "A stalled"
            time.sleep(0.02)  # A holds every token
        others = [start(spec) for spec in later]
        assert [other.wait(timeout=60) for other in others] == [0] * len(later)
        Path(stop).touch()
        assert a.wait(timeout=60) == 0
    finally:
        for proc in (a, *others):
            proc.kill()
    """
)


def _drive(tmp_path: Path, mode: str, first: str, *later: str) -> list[str]:
    """The words of a run of :data:`_DRIVER` (its logs in ``tmp_path/log``)."""
    script, driver, log = (
        tmp_path / "program.py",
        tmp_path / "driver.py",
        tmp_path / "log",
    )
    log.mkdir()
    script.write_text(_PROGRAM)
    driver.write_text(_DRIVER)
    stop = tmp_path / "stop"
    return [PYTHON, str(driver), str(script), str(log), str(stop), mode, first, *later]


def _ledger_env(tmp_path: Path) -> dict[str, str]:
    ledger = tmp_path / "ledger"
    ledger.mkdir(mode=0o700)
    return clean_env(BUDGETED_LEDGER=str(ledger))


@pytest.mark.parametrize("mode", ["processes", "threads"])
@pytest.mark.parametrize("where", ["ledger", "budgeted run -j 2"])
def test_programs_with_long_and_short_tasks_share_the_cpus(tmp_path, where, mode):
    a, b = f"a,{10**6},{A_SECONDS},2", f"b,{B_TASKS},{B_SECONDS},2"
    words = _drive(tmp_path, mode, a, b)
    if where == "ledger":
        done = run(words, _ledger_env(tmp_path))
    else:
        words = [*BUDGETED_RUN, "-j", "2", "--", *words]
        done = run(words, clean_env(BUDGETED_LEDGER="off"))
    assert done.returncode == 0, done.stderr
    log = tmp_path / "log"
    records_a, records_b = _records(log / "a.jsonl"), _records(log / "b.jsonl")
    assert len(records_b) == B_TASKS
    assert max_together(records_a + records_b, "budget") <= 2
    # equal shares: 0.5 (with turns by batch alone, 0.09)
    assert _share_of_b(records_a, records_b) > 0.35


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_three_programs_share_the_cpus_in_thirds(tmp_path, mode):
    """A (long tasks) holds the ledger's 3 tokens when B and C (short tasks)
    start together: while B and C both run, each program has a third."""
    a = f"a,{10**6},{A_SECONDS},3"
    later = (f"{name},{2 * B_TASKS},{B_SECONDS},3" for name in "bc")
    done = run(_drive(tmp_path, mode, a, *later), _ledger_env(tmp_path))
    assert done.returncode == 0, done.stderr
    records = [_records(tmp_path / "log" / f"{name}.jsonl") for name in "abc"]
    assert [len(r) for r in records[1:]] == [2 * B_TASKS] * 2
    assert max_together(sum(records, []), "budget") <= 3
    b, c = records[1:]
    both = max(b[0]["start"], c[0]["start"]), min(b[-1]["end"], c[-1]["end"])
    shares = _shares(records, both)
    assert min(shares) > 0.25, shares  # measured 0.33 each


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_a_program_that_sees_fewer_cpus_gets_what_it_can_use(tmp_path, mode):
    """On a ledger of 4 tokens, A (long tasks, sees 4 CPUs) holds them all
    when B (short tasks, sees 2: tokens 0 and 1) starts: B gets both CPUs it
    can use, never more, and A keeps the two B cannot busy.

    A B worker that ends a batch holds nothing until its next batch comes
    from its parent. Before a batch kept its program's place for that gap,
    a waiting A worker took token 0 or 1 then and kept it for its long
    batch: B had 0.24-0.35 of the task time in processes, 0.40-0.50 in
    threads on a loaded machine.
    """
    a, b = f"a,{10**6},{A_SECONDS},4", f"b,{2 * B_TASKS},{B_SECONDS},2"
    done = run(_drive(tmp_path, mode, a, b), _ledger_env(tmp_path))
    assert done.returncode == 0, done.stderr
    log = tmp_path / "log"
    records_a, records_b = _records(log / "a.jsonl"), _records(log / "b.jsonl")
    assert len(records_b) == 2 * B_TASKS
    assert max_together(records_a + records_b, "budget") <= 4
    assert max_together(records_b, "budget") <= 2
    window = records_b[0]["start"], records_b[-1]["end"]
    busy = sum(_busy(r, window) for r in records_a + records_b)
    assert busy / (4 * (window[1] - window[0])) > 0.8  # measured 0.96-0.99
    assert _share_of_b(records_a, records_b) > 0.4  # measured 0.48-0.50


def _busy(record: dict, window: tuple[float, float]) -> float:
    """How long ``record``'s task ran inside ``window``."""
    return max(0.0, min(record["end"], window[1]) - max(record["start"], window[0]))


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
    from budgeted.hostwide.ledger import default_folder
    from budgeted.hostwide.queue import TRANSIENT_PREFIX

    folder = default_folder()
    return folder.glob(f"{TRANSIENT_PREFIX}*") if folder.is_dir() else iter(())
