"""Nothing outlives its program: workers die when their parent is SIGKILLed.

Each case runs a real program (a script in its own session) that starts
budgeted workers, idle or busy (a pure-Python loop, ``time.sleep``, long
BLAS products). Once every worker is up, the test lists the program's
descendants (workers and resource trackers), kills the program with SIGKILL
and waits for all of them to be gone. Whatever happens, the whole session is
killed at the end, so a failing case leaves no orphan behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

#: Seconds the descendants may take to go (the target is about 1 s; this
#: leaves room for a loaded machine).
GONE_WITHIN = 10
N_WORKERS = 2

PRELUDE = """
import os, sys, threading, time
from pathlib import Path
import numpy as np
import budgeted
from joblib import Parallel, delayed, parallel_config

OUT = Path(sys.argv[1])


def mark(name, text=""):
    tmp = OUT / ("tmp-" + name)
    tmp.write_text(text)
    os.replace(tmp, OUT / name)


def death_signal():
    import ctypes

    value = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value


def busy(kind, *_):
    mark(f"busy-{os.getpid()}", str(death_signal()))
    if kind == "python":
        x = 0
        while True:
            x += 1
    if kind == "sleep":
        time.sleep(600)
    a = np.ones((3000, 3000))  # seconds per product on one thread
    while True:
        a @ a


def pid(*_):
    return os.getpid()


def idle(pids):
    mark("idle", " ".join(str(p) for p in sorted(set(pids))))
    time.sleep(600)
"""

BACKEND = """
with parallel_config("budgeted", n_jobs=2, n_cpus=2):
    {call}
"""

SCENARIOS = {
    "backend": BACKEND.format(
        call="""
    if KIND == "idle":
        idle(Parallel()(delayed(pid)(i) for i in range(8)))
    Parallel()(delayed(busy)(KIND) for i in range(2))
"""
    ),
    # Spawned from a thread that stays alive: no PDEATHSIG, the watchdog only.
    "backend-from-thread": BACKEND.format(
        call="""
    def call():
        with parallel_config("budgeted", n_jobs=2, n_cpus=2):
            Parallel()(delayed(busy)(KIND) for i in range(2))
    threading.Thread(target=call).start()
    time.sleep(600)
"""
    ),
    "executor": """
from budgeted import BudgetedExecutor
pool = BudgetedExecutor(2, n_cpus=2)
if KIND == "idle":
    idle(pool.map(pid, range(8)))
[f.result() for f in [pool.submit(busy, KIND) for _ in range(2)]]
""",
    # Workers forked by a server process: watched through the program's PID.
    "executor-forkserver": """
from budgeted import BudgetedExecutor
if __name__ == "__main__":  # the server's children import this module
    pool = BudgetedExecutor(2, n_cpus=2, context="forkserver")
    [f.result() for f in [pool.submit(busy, KIND) for _ in range(2)]]
""",
    "pmatmat": """
from scipy.sparse.linalg import LinearOperator
from budgeted.linalg import pmatmat

PARENT = os.getpid()


def matmat(X):
    if KIND != "idle" and os.getpid() != PARENT:  # the parent probes dtypes
        busy(KIND)
    return X


L = LinearOperator((4, 4), matvec=matmat, matmat=matmat)
P = pmatmat(L, method="process", nworkers=2)
X = np.ones((4, 2))
P @ X  # one column per worker
idle([])
""",
    "lenskit": """
from budgeted.lenskit import invoker

def call(model, i):
    if KIND != "idle":
        busy(KIND)
    return os.getpid()

with invoker(None, call, n_jobs=2, chunksize=1) as inv:
    idle(inv.map(range(8)))
""",
}

CASES = [
    ("backend", "idle"),
    ("backend", "python"),
    ("backend", "sleep"),
    ("backend", "blas"),
    ("backend-from-thread", "python"),
    ("backend-from-thread", "blas"),
    ("executor", "idle"),
    ("executor", "python"),
    ("executor", "blas"),
    ("executor-forkserver", "python"),
    ("pmatmat", "idle"),
    ("pmatmat", "python"),
    ("lenskit", "idle"),
    ("lenskit", "python"),
]


class Program:
    """A script run in its own session; ``kill_session`` ends all it started."""

    def __init__(self, tmp_path: Path, body: str) -> None:
        self.out = tmp_path / "out"
        self.out.mkdir()
        script = tmp_path / "program.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        self._log = open(tmp_path / "log.txt", "w")  # noqa: SIM115
        self.log_path = tmp_path / "log.txt"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.out)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )

    def wait_for(self, ready, timeout: float = 120):
        """Poll ``ready()`` until it returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while not (found := ready()):
            if self.proc.poll() is not None:
                raise AssertionError(f"program exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return found

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def kill_session(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for init to reap it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def seconds_until_gone(procs: list[psutil.Process], timeout: float) -> float:
    start = time.monotonic()
    while any(running(p) for p in procs):
        if time.monotonic() - start > timeout:
            break
        time.sleep(0.02)
    return time.monotonic() - start


def is_tracker(proc: psutil.Process) -> bool:
    return "resource_tracker" in " ".join(proc.cmdline())


def is_helper(proc: psutil.Process) -> bool:
    """A resource tracker or a fork server (the workers' parent), not a worker."""
    return is_tracker(proc) or bool(proc.children())


def wait_until_started(program: Program, where: str, kind: str) -> list[psutil.Process]:
    """The program's descendants, once every worker is idle or busy as asked."""
    if kind == "idle":
        program.wait_for(lambda: (program.out / "idle").is_file())
        reported = {int(p) for p in (program.out / "idle").read_text().split()}
    else:
        busy = program.wait_for(
            lambda: (
                len(found := list(program.out.glob("busy-*"))) == N_WORKERS and found
            )
        )
        reported = {int(f.name.split("-")[1]) for f in busy}
        # the kernel's parent-death signal only for workers the main thread
        # spawned; the others rely on the watchdog thread
        expected = int(signal.SIGKILL)
        if where.endswith(("from-thread", "forkserver")):
            expected = 0
        assert {int(f.read_text()) for f in busy} == {expected}
    descendants = program.descendants()
    workers = {p.pid for p in descendants if not is_helper(p)}
    assert len(workers) == N_WORKERS, program.log()
    assert reported <= workers, program.log()
    return descendants


@pytest.mark.parametrize("where, kind", CASES)
def test_workers_and_trackers_die_with_a_killed_program(tmp_path, where, kind):
    body = f"KIND = {kind!r}\n" + SCENARIOS[where]
    program = Program(tmp_path, body)
    try:
        descendants = wait_until_started(program, where, kind)
        helpers = sum(is_helper(p) for p in descendants)
        program.proc.send_signal(signal.SIGKILL)
        elapsed = seconds_until_gone(descendants, GONE_WITHIN)
        left = [p.pid for p in descendants if running(p)]
        assert left == [], program.log()
        print(
            f"{where} {kind}: {N_WORKERS} workers, {helpers} trackers/servers gone in"
            f" {elapsed:.2f} s"
        )
    finally:
        program.kill_session()


SHORT_LIVED_THREAD = """
import psutil

def workers():
    return sorted(
        p.pid for p in psutil.Process().children()
        if "resource_tracker" not in " ".join(p.cmdline())
    )


def seen(i):
    return os.getpid(), death_signal()


def call(results):
    # parallel_config is per thread
    with parallel_config("budgeted", n_jobs=2, n_cpus=2):
        results.extend(Parallel()(delayed(seen)(i) for i in range(4)))


with parallel_config("budgeted", n_jobs=2, n_cpus=2):
    results = []
    thread = threading.Thread(target=call, args=(results,))
    thread.start()
    thread.join()
    # the OS thread is really gone (a parent-death signal would have fired)
    while os.path.exists(f"/proc/self/task/{thread.native_id}"):
        time.sleep(0.01)
    spawned = workers()
    print("death signals", sorted({s for _, s in results}))
    second = Parallel()(delayed(seen)(i) for i in range(4))
    print("reused", {p for p, _ in second} <= set(spawned), len(spawned))
    print("alive", workers() == spawned)
"""


def test_workers_spawned_by_a_short_lived_thread_outlive_it(tmp_path):
    program = Program(tmp_path, SHORT_LIVED_THREAD)
    try:
        assert program.proc.wait(120) == 0, program.log()
        out = program.log()
        assert "death signals [0]" in out, out  # the watchdog, not the kernel
        assert "reused True 2" in out, out
        assert "alive True" in out, out
    finally:
        program.kill_session()


POLLED_CHILD = """
import subprocess
child = subprocess.Popen([sys.executable, "-c", '''
import os, sys, threading, time
from budgeted import lifeline
watch = lifeline.{poller}(os.getppid())  # the watchdog where no pidfd exists
threading.Thread(target=watch, daemon=True).start()
open(sys.argv[1], "w").close()
time.sleep(600)
''', str(OUT / "busy-child")])
time.sleep(600)
"""


@pytest.mark.parametrize("poller", ["_ppid_poller", "_pid_poller"])
def test_the_polling_watchdog_also_ends_an_orphan(tmp_path, poller):
    program = Program(tmp_path, POLLED_CHILD.replace("{poller}", poller))
    try:
        program.wait_for(lambda: (program.out / "busy-child").is_file())
        descendants = program.descendants()
        assert len(descendants) == 1, program.log()
        program.proc.send_signal(signal.SIGKILL)
        elapsed = seconds_until_gone(descendants, GONE_WITHIN)
        assert not running(descendants[0]), program.log()
        print(f"{poller}: gone in {elapsed:.2f} s")
    finally:
        program.kill_session()
