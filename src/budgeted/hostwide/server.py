"""``python -m budgeted run [-j N] -- CMD ...``: a fifo jobserver for one command.

::

    budgeted run -j 4 -- CMD
      ├─ /tmp/budgeted-jobserver-<pid>-XXXX/ (0700)
      │    fifo       3 tokens "+++" (CMD owns the 4th, implicit one)
      │    holders/   one locked record per budgeted client: bytes it holds
      │    implicit   flock()ed by the budgeted task running on CMD's own,
      │               implicit CPU (one for all budgeted programs under CMD)
      ├─ CMD with MAKEFLAGS="<theirs> -j4 --jobserver-auth=fifo:.../fifo"
      ├─ refill thread: a record whose lock is free belongs to a dead client:
      │    write its bytes back into the fifo, remove the record
      └─ CMD exits -> remove the folder; exit with CMD's code (128+sig if killed)

make, ninja, cargo and budgeted programs under CMD all take their tokens from
the fifo. A budgeted client that dies (even by SIGKILL) holding tokens gets
them back into the fifo within :data:`REFILL_PERIOD` seconds; make, ninja or
another client that dies holding bytes loses them until CMD exits (the
protocol cannot tell who holds a byte), after which the fifo is gone anyway.
SIGTERM and SIGINT are forwarded to CMD (SIGINT only when it did not come
from the terminal, which sends it to CMD itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .holdings import HOLDERS_DIR, IMPLICIT_LOCK, SERVER_PREFIX, refill_from_dead

__all__ = ["MAX_JOBS", "REFILL_PERIOD", "makeflags_for", "run_jobserver"]

#: Seconds between two looks for records of dead clients.
REFILL_PERIOD = 0.1
#: A fifo holds 64 KiB; far more tokens than any machine has CPUs.
MAX_JOBS = 4096


def makeflags_for(existing: str, jobs: int, fifo: str) -> str:
    """``MAKEFLAGS`` for CMD: its words kept, ours last (the last option wins)."""
    words = existing.split()
    tail = words[words.index("--") :] if "--" in words else []
    head = words[: len(words) - len(tail)]
    return " ".join([*head, f"-j{jobs}", f"--jobserver-auth=fifo:{fifo}", *tail])


@contextlib.contextmanager
def _jobserver_folder(tokens: int) -> Iterator[tuple[Path, int]]:
    """A private folder with a fifo holding ``tokens`` bytes; removed after."""
    folder = Path(tempfile.mkdtemp(prefix=f"{SERVER_PREFIX}{os.getpid()}-"))
    fd = -1
    try:
        fifo = folder / "fifo"
        os.mkfifo(fifo, 0o600)
        (folder / HOLDERS_DIR).mkdir(mode=0o700)
        os.close(os.open(folder / IMPLICIT_LOCK, os.O_CREAT | os.O_EXCL, 0o600))
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        os.write(fd, b"+" * tokens)
        yield fifo, fd
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _refilling(holders: Path, fifo_fd: int) -> Iterator[None]:
    """A thread writing back the tokens of dead clients, while in the block."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(REFILL_PERIOD):
            refill_from_dead(holders, fifo_fd)

    thread = threading.Thread(target=loop, name="budgeted-refill", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _from_terminal() -> bool:
    """True when SIGINT came from a terminal, which also sent it to CMD."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _forwarding(child: subprocess.Popen) -> Iterator[None]:
    """Forward SIGTERM and SIGINT to ``child`` while it runs."""

    def forward(signum, frame) -> None:
        if signum == signal.SIGINT and _from_terminal():
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code(returncode: int) -> int:
    """A shell's exit code for a child: its code, or 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_jobserver(command: Sequence[str], jobs: int) -> int:
    """Run ``command`` under a fifo jobserver of ``jobs`` CPUs; return its exit code.

    Raises
    ------
    ValueError
        When ``jobs`` is not in 1..:data:`MAX_JOBS` or ``command`` is empty.
    """
    if not 1 <= jobs <= MAX_JOBS:
        raise ValueError(f"-j must be between 1 and {MAX_JOBS}, got {jobs}")
    if not command:
        raise ValueError("budgeted run needs a command after --")
    with _jobserver_folder(jobs - 1) as (fifo, fd):
        env = dict(os.environ)
        env["MAKEFLAGS"] = makeflags_for(env.get("MAKEFLAGS", ""), jobs, str(fifo))
        child = subprocess.Popen(list(command), env=env)
        try:
            with _refilling(fifo.parent / HOLDERS_DIR, fd), _forwarding(child):
                returncode = child.wait()
        finally:
            if child.poll() is None:  # we were interrupted: CMD dies with us
                child.kill()
                child.wait()
    return exit_code(returncode)
