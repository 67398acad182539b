"""Run a budgeted script in a fresh interpreter, signal it, list what it leaves.

Shared by the cleanup and bad-input tests. A script is the :data:`PRELUDE`
(imports, a ``started()`` marker, tasks) plus a body; it gets the marker
path as ``sys.argv[1]``. Its stdout and stderr go to files, so orphaned
workers holding them open can never block the test.
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

SHM = Path("/dev/shm")

PRELUDE = """
import os, sys, time, traceback
from pathlib import Path
import numpy as np
import budgeted
from joblib import Parallel, delayed, parallel_config

MARKER = Path(sys.argv[1])


def started():
    tmp = MARKER.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, MARKER)


def hold(a, i):
    # task 0 says it has started, then runs until it is killed
    if i == 0:
        started()
        time.sleep(120)
    return float(a.sum())


def total(a, i):
    return float(a.sum()) + i


def fail(a, i):
    if i == 1:
        raise ValueError(f"task {i} failed on purpose")
    return float(a.sum())


def own_entries(directory):
    pid = os.getpid()
    return sorted(
        e for e in os.listdir(directory) if f"_{pid}_" in e or f"-{pid}-" in e
    )
"""


class Script:
    """A script run in a subprocess (``sys.executable``) from ``tmp_path``.

    Parameters
    ----------
    body : str
        Code run after :data:`PRELUDE`.
    tmp_path : Path
        A fresh directory for the script, its marker and its output.
    env : dict, optional
        Extra environment variables.
    """

    def __init__(self, body: str, tmp_path: Path, env: dict | None = None) -> None:
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "script.py"
        self.path.write_text(PRELUDE + textwrap.dedent(body))
        self.marker = self.dir / "started"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.children: list[psutil.Process] = []

    def start(self) -> Script:
        """Start the script; returns self."""
        self._out = open(self.dir / "stdout.txt", "w")  # noqa: SIM115
        self._err = open(self.dir / "stderr.txt", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(self.path), str(self.marker)],
            stdout=self._out,
            stderr=self._err,
            env=self.env,
            cwd=self.dir,
        )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_started(self, timeout: float = 90) -> int:
        """Wait for the marker a task writes; return that task's PID.

        Also records the script's child processes (workers, trackers) so
        they can be checked, or killed, later.
        """
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"script exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no start marker after {timeout} s")
            time.sleep(0.05)
        self.children = psutil.Process(self.pid).children(recursive=True)
        return int(self.marker.read_text())

    def send(self, sig: int, pid: int | None = None) -> None:
        """Send ``sig`` (really, with psutil) to the script or to ``pid``."""
        psutil.Process(self.pid if pid is None else pid).send_signal(sig)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """Wait for the script to exit; return (returncode, stdout, stderr)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"script did not exit:\n{self.output()}") from None
        self._out.close()
        self._err.close()
        out = (self.dir / "stdout.txt").read_text()
        return self.proc.returncode, out, (self.dir / "stderr.txt").read_text()

    def run(self, timeout: float = 120) -> tuple[int, str, str]:
        """Start the script and wait for it to exit."""
        return self.start().finish(timeout)

    def output(self) -> str:
        return "".join(
            (self.dir / name).read_text()
            for name in ("stdout.txt", "stderr.txt")
            if (self.dir / name).exists()
        )

    def children_left(self, timeout: float = 20) -> list[psutil.Process]:
        """Recorded children still alive after ``timeout`` seconds."""
        _, alive = psutil.wait_procs(self.children, timeout=timeout)
        return alive

    def kill_all(self) -> None:
        """Kill the script and the children recorded (test cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
        for proc in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(self.children, timeout=10)


def entries_of(pids, directory: Path = SHM) -> list[str]:
    """Entries of ``directory`` named after any of ``pids`` (boards, memmap
    folders, loky semaphores all carry their creator's PID)."""
    pids = {int(p) for p in pids}
    found = []
    for name in os.listdir(directory):
        for pid in pids:
            if f"_{pid}_" in name or f"-{pid}-" in name:
                found.append(name)
    return sorted(found)


def tracker_noise(stderr: str) -> list[str]:
    """Lines of ``stderr`` where loky's resource tracker complains."""
    return [
        line
        for line in stderr.splitlines()
        if "resource_tracker" in line or "leaked" in line
    ]
