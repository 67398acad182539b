"""The ``"budgeted"`` backend holds host-wide tokens, for real, across programs.

Independent Python programs (``_budgeted_program.py``: ``Parallel(n_jobs=-1)``
planning for 4 CPUs, each task logging its budget) run side by side under the
host ledger, under ``python -m budgeted run -j 3`` and under GNU make 4.3's
``-j3`` pipe jobserver. At every instant the budgets of the tasks running in
all programs add up to at most the CPUs shared. Tokens come back when a
program or one of its workers is killed, and after exceptions and signals.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from joblib import Parallel, delayed, parallel_config

from _hostwide import BUDGETED_RUN, MAKE, PYTHON, TIMEOUT, Holder, clean_env, run
from _token_program import max_together, read_logs
from budgeted import budgeted_executor
from budgeted.hostwide.ledger import HostLedger

PROGRAM = Path(__file__).with_name("_budgeted_program.py")
N_CPUS, TASKS, SECONDS = 4, 8, 0.15


def program_words(log: Path, name: str, mode: str) -> str:
    return f"{PYTHON} {PROGRAM} {log} {name} {N_CPUS} {TASKS} {SECONDS} {mode}"


def check_records(log: Path, names: list[str], limit: int) -> list[dict]:
    records = read_logs(log)
    assert sorted({r["name"] for r in records}) == sorted(names)
    assert len(records) == TASKS * len(names)
    assert max_together(records, "budget") <= limit, records
    return records


@pytest.fixture
def ledger_dir(tmp_path) -> Path:
    folder = tmp_path / "ledger"
    folder.mkdir(mode=0o700)
    return folder


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_two_programs_on_one_ledger_never_exceed_its_cpus(tmp_path, ledger_dir, mode):
    log = tmp_path / "log"
    log.mkdir()
    env = clean_env(BUDGETED_LEDGER=str(ledger_dir))
    procs = [
        subprocess.Popen(program_words(log, name, mode).split(), env=env)
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=TIMEOUT) for p in procs] == [0, 0]
    check_records(log, ["a", "b"], N_CPUS)
    assert HostLedger(N_CPUS, folder=ledger_dir).holders() == {}


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_two_programs_under_budgeted_run_never_exceed_j(tmp_path, mode):
    log, tmp = tmp_path / "log", tmp_path / "tmp"
    log.mkdir()
    tmp.mkdir()
    both = f"{program_words(log, 'a', mode)} & {program_words(log, 'b', mode)}; wait"
    env = clean_env(BUDGETED_LEDGER="off", TMPDIR=str(tmp))
    done = run([*BUDGETED_RUN, "-j", "3", "--", "sh", "-c", both], env)
    assert done.returncode == 0, done.stderr
    records = check_records(log, ["a", "b"], 3)
    assert max(r["budget"] for r in records) <= 3
    assert sorted(p.name for p in tmp.iterdir()) == []  # nothing left behind


@pytest.mark.skipif(not Path(MAKE).exists(), reason="needs GNU make")
@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_two_programs_under_make_never_exceed_j(tmp_path, mode):
    log = tmp_path / "log"
    log.mkdir()
    rules = {name: f"+@{program_words(log, name, mode)}" for name in ("a", "b")}
    text = "all: a b\n.PHONY: all a b\n"
    text += "".join(f"{target}:\n\t{line}\n" for target, line in rules.items())
    (tmp_path / "Makefile").write_text(text)
    env = clean_env(BUDGETED_LEDGER="off")
    done = run([MAKE, "-j3", "-s"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "jobserver" not in done.stderr, done.stderr  # make: every token back
    check_records(log, ["a", "b"], 3)


_KILLED_WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    import budgeted
    from joblib import Parallel, delayed, parallel_config
    from budgeted import hostwide

    def task(i):
        time.sleep(0.3)
        if i == 0:  # holds its tokens, then dies
            os.kill(os.getpid(), signal.SIGKILL)
        return budgeted.current_budget()

    with parallel_config("budgeted", n_cpus=3):
        try:
            Parallel(n_jobs=3)(delayed(task)(i) for i in range(3))
        except Exception as exc:
            print(type(exc).__name__)
    source = hostwide.tokens_for_this_process(3)
    print(source.kind, source.describe()["free"])
    """
)


@pytest.mark.skipif(not Path(MAKE).exists(), reason="needs GNU make")
def test_tokens_of_a_killed_worker_come_back_to_make(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_WORKER)
    (tmp_path / "Makefile").write_text(f"all:\n\t+@{PYTHON} {script}\n")
    done = run([MAKE, "-j3", "-s"], clean_env(BUDGETED_LEDGER="off"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "jobserver" not in done.stderr, done.stderr  # make: every token back
    assert done.stdout.split() == ["TerminatedWorkerError", "jobserver", "2"]


_HOLD_THEN = textwrap.dedent(
    """
    import os, signal, sys, time
    import budgeted
    from joblib import Parallel, delayed, parallel_config

    how, marker = sys.argv[1], sys.argv[2]

    def task(i):
        open(f"{marker}-{os.getpid()}-{i}", "w").close()
        if how == "exception" and i == 3:
            time.sleep(0.5)
            raise ValueError("on purpose")
        # threads cannot be killed: a thread-mode call ends when its tasks do
        time.sleep(60 if sys.argv[3] == "processes" and how != "exception" else 2)

    with parallel_config("budgeted", n_cpus=4, prefer=sys.argv[3]):
        try:
            Parallel(n_jobs=4)(delayed(task)(i) for i in range(4))
        except ValueError:
            print("raised")
    """
)


def _held_by_program(ledger: HostLedger, pid: int, children: bool) -> int:
    import psutil

    pids = {pid}
    if children:
        pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    return sum(n for holder, n in ledger.holders().items() if holder in pids)


@pytest.mark.parametrize("mode", ["processes", "threads"])
@pytest.mark.parametrize("how", ["exception", "SIGTERM", "SIGINT", "SIGKILL"])
def test_tokens_come_back_on_every_exit_path(tmp_path, ledger_dir, how, mode):
    script, marker = tmp_path / "hold.py", tmp_path / "started"
    script.write_text(_HOLD_THEN)
    env = clean_env(BUDGETED_LEDGER=str(ledger_dir))
    proc = subprocess.Popen(
        [PYTHON, str(script), how, str(marker), mode],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    ledger = HostLedger(N_CPUS, folder=ledger_dir)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(tmp_path.glob("started-*"))) < 4:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        held = _held_by_program(ledger, proc.pid, mode == "processes")
        assert held == N_CPUS  # every task holds one token: the ledger is full
        if how != "exception":
            proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    if how == "exception":
        assert out.strip() == "raised"
    else:
        assert proc.returncode != 0
    # all four tokens are free for another program at once (workers die with
    # their program within a second; the kernel drops their locks)
    assert ledger.acquire(N_CPUS, block=True, timeout=5) == N_CPUS
    ledger.close()


def test_a_nested_call_takes_no_tokens_of_its_own(tmp_path, ledger_dir):
    """The inner Parallel shares its outer task's CPUs: it holds no tokens.

    Two outer tasks with static budgets of 1 on a ledger of 2: were the inner
    calls to take tokens, their tasks would wait forever (the ledger is full)
    or their process would hold more than the outer task's one token.
    """
    code = textwrap.dedent(
        """
        import os
        import budgeted
        from joblib import Parallel, delayed, parallel_config
        from budgeted.hostwide.ledger import HostLedger

        def inner(folder):
            holders = HostLedger(2, folder=folder).holders()
            return holders.get(os.getpid(), 0), sum(holders.values())

        def outer(folder):
            return Parallel(n_jobs=2)(delayed(inner)(folder) for _ in range(2))

        with parallel_config("budgeted", n_cpus=2, dynamic=False):
            print(Parallel(n_jobs=2)(delayed(outer)(FOLDER) for _ in range(2)))
        """
    ).replace("FOLDER", repr(str(ledger_dir)))
    env = clean_env(BUDGETED_LEDGER=str(ledger_dir))
    done = run([sys.executable, "-c", code], env)
    assert done.returncode == 0, done.stderr
    seen = [pair for call in eval(done.stdout) for pair in call]  # noqa: S307
    assert len(seen) == 4
    assert all(own == 1 and total <= 2 for own, total in seen), seen


def test_info_shows_the_ledger_and_who_holds_its_tokens(tmp_path, ledger_dir):
    holder = HostLedger(N_CPUS, folder=ledger_dir)
    assert holder.acquire(3) == 3
    env = clean_env(BUDGETED_LEDGER=str(ledger_dir))
    done = run([PYTHON, "-m", "budgeted", "info", "--n-cpus", str(N_CPUS)], env)
    assert done.returncode == 0, done.stderr
    assert (
        f"host tokens: ledger {ledger_dir}: {N_CPUS} tokens, 3 in use"
        f" (pid {os.getpid()}: 3)"
    ) in done.stdout
    assert "this program's share now: up to 1 CPUs" in done.stdout
    assert "waiting" not in done.stdout
    # a thread waiting for a token shows in the queue
    assert holder.acquire(1) == 1
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiter = HostLedger(N_CPUS, folder=ledger_dir)
        waited = pool.submit(waiter.acquire, 1, True, TIMEOUT)
        while not list(ledger_dir.glob("wait-*")):
            assert not waited.done()
            time.sleep(0.01)
        done = run([PYTHON, "-m", "budgeted", "info", "--n-cpus", str(N_CPUS)], env)
        holder.close()
        assert waited.result() == 1
        waiter.close()
    assert done.returncode == 0, done.stderr
    assert (
        f"programs waiting, fewest CPUs held first: pid {os.getpid()}: 1"
    ) in done.stdout


@pytest.mark.skipif(not Path(MAKE).exists(), reason="needs GNU make")
def test_info_and_check_under_make_j2(tmp_path):
    info, check = (f"+@{PYTHON} -m budgeted {cmd}" for cmd in ("info", "check"))
    (tmp_path / "Makefile").write_text(f"all:\n\t{info}\n\t{check}\n")
    done = run([MAKE, "-j2", "-s"], clean_env(BUDGETED_LEDGER="off"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(MAKEFLAGS, -j2, pipe style): 1 tokens free" in done.stdout
    assert "budgets hold" in done.stdout


def test_info_and_check_under_budgeted_run(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    both = f"{PYTHON} -m budgeted info && {PYTHON} -m budgeted check"
    env = clean_env(BUDGETED_LEDGER="off", TMPDIR=str(tmp))
    done = run([*BUDGETED_RUN, "-j", "3", "--", "sh", "-c", both], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(MAKEFLAGS, -j3, fifo style): 2 tokens free" in done.stdout
    assert "budgets hold" in done.stdout


def _holders_seen_in_task(folder: str) -> tuple[int, dict[int, int]]:
    return os.getpid(), HostLedger(2, folder=folder).holders()


def test_a_budgeted_executor_call_holds_its_cpus_and_waits_for_them(
    ledger_dir, monkeypatch
):
    """pmatmat's process method and the LensKit invoker run on this pool."""
    from budgeted import budgeted_executor

    monkeypatch.setenv("BUDGETED_LEDGER", str(ledger_dir))
    other = HostLedger(2, folder=ledger_dir)  # another program, holding all
    with budgeted_executor(1, n_cpus=2) as pool:
        pool.submit(int).result(timeout=TIMEOUT)  # the worker is up
        assert other.acquire(2) == 2
        future = pool.submit(_holders_seen_in_task, str(ledger_dir))
        time.sleep(1.0)
        assert not future.done()  # no CPU free on the host: it waits
        other.release()
        pid, holders = future.result(timeout=TIMEOUT)
    other.close()
    assert holders == {pid: 2}  # the worker's budget of 2, held while it ran
    assert HostLedger(2, folder=ledger_dir).holders() == {}


def _wait_and_report(barrier, folder: str):
    import budgeted

    barrier.wait()  # both tasks run at once
    holders = HostLedger(2, folder=folder).holders()
    return budgeted.current_budget(), holders.get(os.getpid(), 0)


def test_a_fixed_budget_above_the_share_takes_only_the_share(
    ledger_dir, monkeypatch, barrier_factory
):
    """inner_max_num_threads=4 with 2 tasks on 2 CPUs: each task holds its
    share (1 token) and runs with 4 threads, as asked; the first task does
    not take both tokens and leave the second waiting."""
    from joblib import Parallel, delayed, parallel_config

    monkeypatch.setenv("BUDGETED_LEDGER", str(ledger_dir))
    barrier = barrier_factory(2)
    with parallel_config("budgeted", n_cpus=2, inner_max_num_threads=4):
        seen = Parallel(n_jobs=2)(
            delayed(_wait_and_report)(barrier, str(ledger_dir)) for _ in range(2)
        )
    assert seen == [(4, 1), (4, 1)]


def _record_loading(path: str) -> str:
    with open(path, "a") as f:
        f.write(f"{time.monotonic()}\n")
    return path


class RecordsItsLoading:
    """An argument that notes when a worker loads (unpickles) it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return _record_loading, (self.path,)


@pytest.mark.parametrize("pool", ["backend", "executor"])
def test_a_batch_is_loaded_only_once_it_holds_its_cpus(tmp_path, pool):
    """Loading a batch imports what its tasks need (scikit-learn: seconds of
    CPU in every worker): a worker does it on the batch's CPUs, not before."""
    log = tmp_path / "loaded"
    if pool == "backend":
        with parallel_config("budgeted", n_jobs=2, n_cpus=2):
            Parallel()(delayed(abs)(-i) for i in range(2))  # the workers are up
            with Holder(2, 2, 1.5) as holder:  # every token of the ledger
                Parallel()(delayed(str)(RecordsItsLoading(log)) for _ in range(2))
                released = holder.end()
    else:
        with budgeted_executor(2, n_cpus=2) as executor:
            list(executor.map(abs, range(-2, 0)))  # the workers are up
            with Holder(2, 2, 1.5) as holder:
                calls = [executor.submit(str, RecordsItsLoading(log)) for _ in "ab"]
                [call.result() for call in calls]
                released = holder.end()
    loaded = [float(t) for t in log.read_text().split()]
    assert len(loaded) == 2
    assert min(loaded) >= released
