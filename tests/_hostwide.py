"""Helpers of the host-wide token tests: clean environments, real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = Path(__file__).with_name("_token_program.py")
PYTHON = sys.executable
MAKE = "/usr/bin/make"
NINJA = str(Path(sys.executable).with_name("ninja"))
BUDGETED_RUN = [PYTHON, "-m", "budgeted", "run"]
TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without any make flags or budgeted settings, plus ``extra``."""
    drop = {"MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith("BUDGETED_")
    }
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end (at most :data:`TIMEOUT` s), output captured."""
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs
    )


def tickets(folder: Path) -> list[Path]:
    """The queue's ticket files in ``folder`` (none if it does not exist)."""
    return sorted(folder.glob("wait-*")) if folder.is_dir() else []


def start_waiter(words: list[str], folder: Path, **popen) -> subprocess.Popen:
    """Start ``words`` (a program that waits for a token, its output piped)
    and return once its ticket is in ``folder``."""
    before = len(tickets(folder))
    proc = subprocess.Popen(words, stdout=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + TIMEOUT
    while len(tickets(folder)) == before:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def program(log: Path, name: str, threads: int, tasks: int, seconds: float) -> str:
    """The shell words of a :mod:`_token_program` run."""
    return f"{PYTHON} {PROGRAM} {log} {name} {threads} {tasks} {seconds}"


_HOLDER = """
import json, sys, time
import budgeted
with budgeted.hold_cpus(int(sys.argv[1]), n_cpus=int(sys.argv[2])) as held:
    print(json.dumps({"held": held}), flush=True)
    time.sleep(float(sys.argv[3]))
    end = time.monotonic()
print(json.dumps({"end": end}), flush=True)
"""


class Holder:
    """Another program of the user holding CPUs of a ledger for a while.

    It holds ``n_threads`` of a ledger of ``n_cpus`` (the ledger of
    ``os.environ``, the suite's private one by default) for ``seconds``;
    :meth:`end` waits for it to let go and returns when it did
    (``time.monotonic()``, the same clock in every process).
    """

    def __init__(self, n_threads: int, n_cpus: int, seconds: float) -> None:
        words = [str(n_threads), str(n_cpus), str(seconds)]
        self.process = subprocess.Popen(
            [PYTHON, "-c", _HOLDER, *words], stdout=subprocess.PIPE, text=True
        )
        assert json.loads(self.process.stdout.readline())["held"] == n_threads

    def end(self) -> float:
        return json.loads(self.process.stdout.readline())["end"]

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()
