"""budgeted programs under one make jobserver queue for its bytes.

make's protocol has no queue, so budgeted's programs under the same
``make -jN`` queue among themselves in a transient folder named after the
pipe, inside the user's private ledger folder: made 0700 by the first waiter,
removed by the last one out, and what a waiter killed while waiting left is
removed by the next client. Real pipes, real waiting processes (the
programs' shares under real make: ``test_hostwide_fairness.py``).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from _hostwide import PYTHON, TIMEOUT, clean_env, start_waiter, tickets
from budgeted import hostwide
from budgeted.hostwide.ledger import HostLedger, default_folder
from budgeted.hostwide.queue import STALE, TRANSIENT_PREFIX

_WAITER = textwrap.dedent(
    """
    import time
    from budgeted import hostwide
    source = hostwide.tokens_for_this_process()
    print(source.acquire(1, block=True, timeout=60), flush=True)
    time.sleep(60)  # holds the byte until killed
    """
)


@pytest.fixture
def pipe():
    """An empty jobserver pipe of ``make -j3``: (read fd, write fd, MAKEFLAGS)."""
    read, write = os.pipe()
    yield read, write, {"MAKEFLAGS": f"-j3 --jobserver-auth={read},{write}"}
    os.close(read)
    os.close(write)


def _queue_folder(read: int) -> Path:
    pipe = os.fstat(read)
    return default_folder() / f"{TRANSIENT_PREFIX}{pipe.st_dev}-{pipe.st_ino}"


def _start_waiter(pipe) -> subprocess.Popen:
    """A real program waiting for a byte of ``pipe``, once its ticket is seen."""
    read, write, environ = pipe
    words, env = [PYTHON, "-c", _WAITER], clean_env(**environ)
    return start_waiter(words, _queue_folder(read), env=env, pass_fds=(read, write))


def _stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None:
            proc.kill()
            proc.wait()


def test_a_waiting_program_goes_before_later_takers(pipe):
    """The byte written back goes to the program waiting in the pipe's queue,
    not to another program's later take; the folder is private and goes with
    the last waiter."""
    read, write, environ = pipe
    folder = _queue_folder(read)
    waiter = _start_waiter(pipe)
    later = hostwide.choose_source(environ)
    try:
        info = folder.stat()
        assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
        (ticket,) = tickets(folder)
        assert ticket.name.split("-")[2] == str(waiter.pid)  # its program
        assert later.queue.folder == folder  # the same pipe: the same queue
        assert later.queue.waiters() == {waiter.pid: 1}
        info = subprocess.run(
            [PYTHON, "-m", "budgeted", "info"],
            env=clean_env(**environ),
            pass_fds=(read, write),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert info.returncode == 0, info.stderr
        line = f"programs waiting, fewest CPUs held first: pid {waiter.pid}: 1"
        assert line in info.stdout
        waiter.send_signal(signal.SIGSTOP)  # so it cannot take the byte yet
        os.write(write, b"+")
        os.utime(ticket)  # as fresh as if it had just looked
        assert later.acquire(1) == 0  # free, but the waiter is ahead
        waiter.send_signal(signal.SIGCONT)
        assert waiter.stdout.readline().strip() == "1"  # served
        assert not folder.exists()  # the last waiter out removed it
        assert later.free_tokens() == 0  # the waiter holds the byte
    finally:
        _stop(waiter)
        later.close()


def test_a_killed_waiters_queue_folder_is_removed(pipe):
    """A waiter SIGKILLed leaves its ticket, unlocked: once old, the next
    client of any jobserver, or program on the user's ledger, removes it and
    the folder; a live waiter's old ticket (locked) and its folder stay."""
    read, _, environ = pipe
    folder = _queue_folder(read)
    dead = _start_waiter(pipe)
    alive = None
    try:
        _stop(dead)
        (left,) = tickets(folder)
        old = time.time() - STALE - 1
        os.utime(left, (old, old))
        hostwide.choose_source(environ).close()  # a new client looks
        assert not folder.exists()
        alive = _start_waiter(pipe)
        alive.send_signal(signal.SIGSTOP)  # its ticket ages too, but is locked
        (kept,) = tickets(folder)
        os.utime(kept, (old, old))
        hostwide.choose_source(environ).close()
        assert tickets(folder) == [kept]
        _stop(alive)  # now it is a dead waiter's too
        HostLedger(1).close()  # a program on the user's ledger looks too
        assert not folder.exists()
    finally:
        _stop(dead, alive)


def test_a_folder_that_is_not_private_is_not_used(pipe):
    """A queue folder someone else could read or write is left as it is: the
    program waits without a ticket."""
    read, _, environ = pipe
    folder = _queue_folder(read)
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "someone-else-s").touch()  # not empty: no one removes it
    try:
        source = hostwide.choose_source(environ)
        assert source.acquire(1, block=True, timeout=0.2) == 0  # nothing to take
        assert [p.name for p in folder.iterdir()] == ["someone-else-s"]
        assert folder.stat().st_mode & 0o777 == 0o755
        source.close()
    finally:
        (folder / "someone-else-s").unlink()
        folder.rmdir()
