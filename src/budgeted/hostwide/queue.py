"""First come, first served between programs waiting for host-wide tokens.

::

    <folder>/wait-<ticket>-<program>-<pid>-<thread>
        a thread waiting for a token; its ticket is the time it began to
        wait (CLOCK_MONOTONIC, one clock for every process); the file is
        locked while it waits and touched at every look

No one takes a free token while a thread of *another* program holds an older
fresh ticket: neither a waiter with a newer ticket, nor a batch starting or
growing without waiting. So the token a holder gives back at the end of a
batch goes to the program that has waited longest, and programs that all
want every CPU take turns, batch by batch. Threads of one program do not
queue behind each other (the order inside a program changes nothing between
programs). A ticket counts while it is fresh (:data:`FRESH`): a stopped
program (Ctrl-Z) holds no one back; the files of waiters that died are
removed once :data:`STALE`.

A take that does not wait looks at the folder's listing only when the folder
changed (its size and time: a ticket made or removed) or :data:`RECHECK`
passed since it last found no one waiting: one ``stat`` per batch instead of
a listing.

The host ledger keeps its queue in its folder; under ``python -m budgeted
run`` the budgeted programs queue in the server's folder (make, ninja or
cargo under the same server do not queue: the make protocol has no queue).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FRESH", "RECHECK", "STALE", "WaitQueue"]

#: A waiter's ticket holds the others back while its file was touched within
#: this many seconds (a waiter touches it at every look, at least every 0.1 s).
FRESH = 0.5
#: A ticket file untouched this long, and not locked, is a dead waiter's.
STALE = 30.0
#: Longest time a take trusts "no one waits" while the folder is unchanged.
RECHECK = 0.02
_TICKET = "wait-"


class WaitQueue:
    """The queue of threads waiting for tokens, as files in ``folder``.

    Parameters
    ----------
    folder : Path
        A folder the programs sharing the tokens can all write (the ledger's
        folder, or a ``budgeted run`` server's).
    program : int
        The program this process works for (its main process's PID).
    file_mode : int
        Mode of the ticket files (others must be able to read them).
    """

    def __init__(self, folder: Path, program: int, file_mode: int = 0o600) -> None:
        self.folder = Path(folder)
        self.program = program
        self._file_mode = file_mode
        self._local = threading.local()  # this thread's (ticket, fd) while waiting
        self._no_one = (None, 0.0)  # (folder's signature, until) when no one waited

    @property
    def _ticket(self) -> tuple[int, int] | None:
        return getattr(self._local, "ticket", None)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside the block this thread holds a ticket: programs that come to
        wait later, or take without waiting, let it go first. Blocks nest: the
        outermost keeps the thread's place."""
        if self._ticket is not None:
            yield
            return
        number = time.monotonic_ns()
        name = f"{_TICKET}{number:020d}-{self.program}-{os.getpid()}"
        name += f"-{threading.get_native_id()}"
        fd = self._open_ticket(name)
        if fd is None:  # no ticket (a full or read-only folder): wait unqueued
            yield
            return
        self._local.ticket = (number, fd)
        try:
            yield
        finally:
            self._local.ticket = None
            with contextlib.suppress(OSError):
                os.unlink(self.folder / name)
            os.close(fd)

    def touch(self) -> None:
        """This thread still waits: its ticket stays fresh."""
        if self._ticket is not None:
            with contextlib.suppress(OSError):
                os.utime(self._ticket[1])

    def my_turn(self) -> bool:
        """Whether this thread may take a token now: no thread of another
        program holds a fresh ticket older than this thread's (any fresh
        ticket, if this thread is not waiting)."""
        ticket = self._ticket
        if ticket is not None:
            return not self._waited_longer(ticket[0])
        signature, until = self._no_one
        now = time.monotonic()
        current = self._signature()
        if now < until and current == signature:
            return True  # no one waited, and no ticket was made since
        if self._waited_longer(None):
            return False
        self._no_one = (current, now + RECHECK)
        return True

    def _signature(self) -> tuple[int, int] | None:
        """What changes when a ticket is made or removed: the folder's size
        (its number of entries, on tmpfs) and modification time."""
        try:
            info = os.stat(self.folder)
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    def waiters(self) -> dict[int, int]:
        """Program -> its threads waiting now (fresh tickets)."""
        counts: dict[int, int] = {}
        now = time.time()
        for path in self.folder.glob(f"{_TICKET}*"):
            ticket = _parse_ticket(path.name)
            with contextlib.suppress(OSError):
                if ticket is not None and now - path.stat().st_mtime < FRESH:
                    counts[ticket[1]] = counts.get(ticket[1], 0) + 1
        return counts

    def _open_ticket(self, name: str) -> int | None:
        """Create the ticket file and lock it; None if impossible.

        Only tickets older than :data:`STALE` are ever removed by others, so
        the moment between creating and locking is safe.
        """
        path = self.folder / name
        flags = os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, self._file_mode)
        except OSError:
            return None
        try:
            os.fchmod(fd, self._file_mode)  # whatever the umask
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while waiting: alive
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            return None
        return fd

    def _waited_longer(self, mine: int | None) -> bool:
        """Whether another program's fresh ticket is older than ``mine``
        (None: any fresh one); dead waiters' files are removed on the way."""
        now = time.time()
        try:
            entries = os.scandir(self.folder)
        except OSError:
            return False
        with entries:
            for entry in entries:
                ticket = _parse_ticket(entry.name)
                if ticket is None or not self._ahead(ticket, mine):
                    continue
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if age < FRESH:
                    return True
                if age > STALE:
                    _remove_if_unlocked(entry.path)  # its waiter died
        return False

    def _ahead(self, ticket: tuple[int, int], mine: int | None) -> bool:
        """Whether ``ticket`` (number, program) goes before this thread."""
        number, program = ticket
        return program != self.program and (mine is None or number < mine)


def _parse_ticket(name: str) -> tuple[int, int] | None:
    """(ticket, program) of a ticket file's name, None for any other file."""
    parts = name.split("-")
    if len(parts) != 5 or f"{parts[0]}-" != _TICKET:
        return None
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        return None


def _remove_if_unlocked(path: str) -> None:
    """Remove a ticket file no live waiter holds."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass  # held: its waiter lives (stopped, or slow)
    finally:
        os.close(fd)
