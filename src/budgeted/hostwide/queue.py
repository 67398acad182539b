"""The programs holding the fewest CPUs first, then first come, first served.

::

    <folder>/wait-<ticket>-<program>-<usable>-<pid>-<thread>
        a thread waiting for a token; its ticket is the time it began to
        wait (CLOCK_MONOTONIC, one clock for every process), ``usable`` how
        many of the tokens it can use; the file is locked while it waits and
        touched at every look, and its *size* is how many CPUs its program
        holds now

A thread's place is ``(held, ticket)``: its program's CPUs held now, then the
time it began to wait. No one takes a free token while a thread of *another*
program has a fresh ticket with an earlier place: neither a waiter behind it,
nor a batch starting or growing without waiting (whose place is its
program's CPUs held, after every ticket with as many). So the token a holder
gives back goes to the waiting program that holds the fewest, and among
equals to the one that waited longest: programs that all want every CPU
converge to equal shares of them (max-min fairness), whatever the lengths of
their batches; turns by ticket alone gave a program whose batches were 10
times shorter a tenth of the CPU time. Threads of one program do not queue
behind each other (the order inside a program changes nothing between
programs).

What a program holds changes under its waiters' feet (its other batches
start and end): a batch that starts or ends writes the new count into every
ticket of its program (:meth:`WaitQueue.tell_held`), before the token it
gives back can be seen, and a waiter rewrites its own at every look. A
thread that does not say what its program holds (:meth:`WaitQueue.counting`)
counts the tokens its own process holds.

In a ledger, whose programs may see different numbers of CPUs
(tokens ``0 .. u-1``), a take leaves to older waiters only the tokens they
can use (:meth:`WaitQueue.reserved`), so a program limited to fewer CPUs
never keeps the others off a CPU it cannot use. A ticket counts while it is
fresh (:data:`FRESH`): a stopped program (Ctrl-Z) holds no one back; the
files of waiters that died are removed once :data:`STALE`.

A batch that gives a token back while another program waits *keeps its
program's place* for :data:`KEEP` s (:meth:`WaitQueue.keep_place`): a ticket
with what its program holds after, back-dated so that it goes stale by
itself. The program's next batch, on its way from the parent, takes the
token back before a waiter of a program holding more; without it, such a
waiter took the token in the gap between two batches and kept it for its
whole batch (a program that sees 2 of 4 CPUs got 0.24-0.35 of the task time
in processes instead of 0.5).

A take that does not wait looks at the folder's listing only when the folder
changed (its size and time: a ticket made or removed), :data:`RECHECK`
passed, or its program holds more than when it last found no one ahead:
one ``stat`` per batch instead of a listing.

The host ledger keeps its queue in its folder; under ``python -m budgeted
run`` the budgeted programs queue in the server's folder, and under any
other jobserver (``make -jN``) in a *transient* folder named after the
jobserver's pipe (:data:`TRANSIENT_PREFIX`), made private at the first
wait and removed by the last waiter out; what a waiter killed there left is
removed by the next jobserver client or ledger program
(:func:`remove_abandoned`). make,
ninja or cargo under the same jobserver do not queue: the make protocol has
no queue.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..leftovers import is_private_dir

__all__ = [
    "ANY",
    "FRESH",
    "KEEP",
    "RECHECK",
    "STALE",
    "TICKET_PREFIX",
    "TRANSIENT_PREFIX",
    "WaitQueue",
    "remove_abandoned",
]

#: A waiter's ticket holds the others back while its file was touched within
#: this many seconds (a waiter touches it at every look, at least every 0.1 s).
FRESH = 0.5
#: A ticket file untouched this long, and not locked, is a dead waiter's.
STALE = 30.0
#: How long a batch that gave a token back keeps its program's place, for the
#: program's next batch (seconds; the gap between two batches of a worker,
#: a round trip to its parent, was 50 ms in the trace that found it).
KEEP = 0.05
#: Longest time a take trusts "no one waits" while the folder is unchanged.
RECHECK = 0.02
#: ``usable`` of a waiter that can use any token (a jobserver's are all alike).
ANY = 10**9
#: How a transient queue folder (a make jobserver's, in the user's private
#: ledger folder) is named; the pipe's device and inode follow.
TRANSIENT_PREFIX = "jobserver-"
#: How a ticket file is named: ``wait-<ticket>-<program>-<usable>-<pid>-<thread>``.
TICKET_PREFIX = "wait-"


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
    usable : int
        How many of the tokens this program can use (a ledger's ``0 ..
        usable-1``); :data:`ANY` when all are alike.
    process_held : callable, optional
        The tokens this process holds: the place of a thread that does not
        say what its program holds (default: none).
    transient : bool, default=False
        The folder exists only while someone waits: the first waiter makes
        it (0700), the last one out removes it.
    """

    def __init__(
        self,
        folder: Path,
        program: int,
        file_mode: int = 0o600,
        usable: int = ANY,
        process_held: Callable[[], int] | None = None,
        transient: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.transient = transient
        self.program = program
        self.usable = usable
        self._process_held = process_held or (lambda: 0)
        self._file_mode = file_mode
        self._local = threading.local()  # this thread's (ticket, fd) while waiting
        # (folder's signature, until, held) when no one was ahead of a take
        self._no_one: tuple = (None, 0.0, 0)
        self._none_mine = None  # folder's signature when it had none of ours
        self._no_other: tuple = (None, 0.0)  # (signature, until): no one else
        self._kept: dict[int, str] = {}  # thread -> its kept place's file
        self._kept_lock = threading.Lock()
        self._kept_pid = os.getpid()
        self._forget_at_exit = False  # registered with the first kept place

    @property
    def _ticket(self) -> tuple[int, int] | None:
        return getattr(self._local, "ticket", None)

    def counting(self, held: Callable[[], int]) -> _Counting:
        """Inside the block, ``held()`` is what this thread's program holds
        (a pool's count over its workers): its place in the queue."""
        return _Counting(self._local, held)

    def _held(self) -> int:
        held = getattr(self._local, "held", None)
        return self._process_held() if held is None else held()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside the block this thread holds a ticket: programs that come to
        wait later, or take without waiting, let it go first. Blocks nest: the
        outermost keeps the thread's place."""
        if self._ticket is not None:
            yield
            return
        self.drop_kept()
        number = time.monotonic_ns()
        name = self._ticket_name(number)
        fd = self._open_ticket(name)
        if fd is None:  # no ticket (a full or read-only folder): wait unqueued
            yield
            return
        self._local.ticket = (number, fd)
        try:
            self.touch()  # says what its program holds
            yield
        finally:
            self._local.ticket = None
            with contextlib.suppress(OSError):
                os.unlink(self.folder / name)
            os.close(fd)
            if self.transient:  # the last one out (others' tickets: ENOTEMPTY)
                with contextlib.suppress(OSError):
                    os.rmdir(self.folder)

    def _ticket_name(self, number: int) -> str:
        """The name of this thread's ticket taken at ``number`` (ns)."""
        where = f"{self.program}-{self.usable}-{os.getpid()}"
        return f"{TICKET_PREFIX}{number:020d}-{where}-{threading.get_native_id()}"

    def touch(self) -> None:
        """This thread still waits: its ticket stays fresh, and says what its
        program holds now."""
        if self._ticket is not None:
            with contextlib.suppress(OSError):
                _write_held(self._ticket[1], self._held())

    def tell_held(self, held: int) -> None:
        """This program holds ``held`` CPUs now: its waiters' tickets say so.

        A batch calls it when what it holds changes, before it gives a token
        back. Only when the folder changed since it last found none of the
        program's tickets does it look (one ``stat`` otherwise).
        """
        signature = self._signature()
        if signature is not None and signature == self._none_mine:
            return
        found = False
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            for entry in entries:
                ticket = _parse_ticket(entry.name)
                if ticket is None or ticket[1] != self.program:
                    continue
                found = True
                _write_held_at(entry.path, held)
        self._none_mine = None if found else signature

    def keep_place(self, held: int) -> None:
        """This thread gives a token back, its program holding ``held`` CPUs
        after, and will want one again: if another program waits, keep the
        program's place for :data:`KEEP` s (a ticket whose time is now and
        size ``held``, stale by itself then; this thread's previous one is
        removed). Call it before the token can be seen."""
        if self._ticket is not None or not self._others_wait():
            return
        name = self._ticket_name(time.monotonic_ns())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        path = os.path.join(self.folder, name)
        try:
            fd = os.open(path, flags, self._file_mode)
        except OSError:
            return  # a transient folder that is gone: no one waits
        try:
            os.fchmod(fd, self._file_mode)
            os.ftruncate(fd, held)
            born = time.time() - (FRESH - KEEP)  # fresh for KEEP seconds
            os.utime(fd, (born, born))
        except OSError:
            pass
        finally:
            os.close(fd)
        with self._kept_lock:
            previous = self._kept.get(threading.get_native_id())
            self._kept[threading.get_native_id()] = path
            if not self._forget_at_exit:
                self._forget_at_exit = True
                atexit.register(self.forget_kept)
        if previous is not None:
            with contextlib.suppress(OSError):
                os.unlink(previous)

    def drop_kept(self) -> None:
        """This thread's next batch has its CPU, or waits with a ticket of
        its own: the place it kept goes (its count would soon be stale)."""
        if not self._kept:
            return
        with self._kept_lock:
            path = self._kept.pop(threading.get_native_id(), None)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def forget_kept(self) -> None:
        """Remove this process's kept places (at exit; the last one out of
        a transient folder removes it)."""
        with self._kept_lock:
            kept, self._kept = list(self._kept.values()), {}
            if self._kept_pid != os.getpid():  # forked: the parent's files
                kept, self._kept_pid = [], os.getpid()
        for path in kept:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if kept and self.transient:
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)

    def _others_wait(self) -> bool:
        """Whether a thread of another program has a fresh ticket.

        Once none was found, none is looked for during :data:`RECHECK` s (a
        waiter that came meanwhile misses one kept place), then the folder is
        listed again only if it changed (a ``stat``)."""
        signature, until = self._no_other
        now = time.monotonic()
        if now < until:
            return False
        current = self._signature()
        changed = current is None or current != signature
        if changed and any(t[1] != self.program for t in self._fresh_tickets()):
            return True
        self._no_other = (current, now + RECHECK)
        return False

    def my_turn(self) -> bool:
        """Whether this thread may take any token now (see :meth:`reserved`)."""
        return self.reserved() == 0

    def reserved(self) -> int:
        """How many tokens, from index 0, are kept for waiters ahead: a thread
        may take only the tokens from this index up. 0 when no thread of
        another program has a fresh ticket with an earlier place than this
        thread's (see the module docstring); else the most tokens such a
        waiter can use."""
        ticket = self._ticket
        if ticket is not None:
            return self._older_waiters_use((self._held(), ticket[0]))
        signature, until, most = self._no_one
        now = time.monotonic()
        current = self._signature()
        held = self._held()
        if now < until and current == signature and held <= most:
            return 0  # no one was ahead, and no ticket was made since
        reserved = self._older_waiters_use((held, None))
        if not reserved:
            self._no_one = (current, now + RECHECK, held)
        return reserved

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
        for _, program, _, _ in self._fresh_tickets():
            counts[program] = counts.get(program, 0) + 1
        return counts

    def _open_ticket(self, name: str) -> int | None:
        """Create the ticket file and lock it; None if impossible.

        Only tickets older than :data:`STALE` are ever removed by others, so
        the moment between creating and locking is safe. A transient folder
        is made if missing (again, if the last waiter out removed it between
        the making and the ticket).
        """
        path = self.folder / name
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(3):
            try:
                fd = os.open(path, flags, self._file_mode)
                break
            except FileNotFoundError:
                if not self.transient or not _make_private(self.folder):
                    return None
            except OSError:
                return None
        else:
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

    def _older_waiters_use(self, mine: tuple[int, int | None]) -> int:
        """The most tokens a fresh ticket of another program with a place
        before ``mine`` (held, ticket or None when not waiting) can use, 0 if
        there is none."""
        ahead = (t[2] for t in self._fresh_tickets() if self._ahead(t, mine))
        return max(ahead, default=0)

    def _fresh_tickets(self) -> Iterator[tuple[int, int, int, int]]:
        """(ticket, program, usable, held) of every fresh ticket in the
        folder; the files of dead waiters are removed on the way."""
        now = time.time()
        try:
            entries = os.scandir(self.folder)
        except OSError:
            return
        with entries:
            for entry in entries:
                ticket = _parse_ticket(entry.name)
                if ticket is None:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                age = now - info.st_mtime
                if age < FRESH:
                    yield (*ticket, info.st_size)
                elif age > STALE:
                    _remove_if_unlocked(entry.path)  # its waiter died

    def _ahead(
        self, ticket: tuple[int, int, int, int], mine: tuple[int, int | None]
    ) -> bool:
        """Whether ``ticket`` (number, program, usable, held) goes before this
        thread, whose place is ``mine`` (held, ticket or None)."""
        number, program, _, held = ticket
        if program == self.program:
            return False
        my_held, my_number = mine
        if held != my_held:
            return held < my_held
        return my_number is None or number < my_number


class _Counting:
    """The block of :meth:`WaitQueue.counting` (a class: it runs per batch)."""

    __slots__ = ("local", "held", "previous")

    def __init__(self, local: threading.local, held: Callable[[], int]) -> None:
        self.local, self.held, self.previous = local, held, None

    def __enter__(self) -> None:
        self.previous = getattr(self.local, "held", None)
        self.local.held = self.held

    def __exit__(self, *exc_info) -> None:
        self.local.held = self.previous


def _parse_ticket(name: str) -> tuple[int, int, int] | None:
    """(ticket, program, usable) of a ticket file's name, None for any other."""
    parts = name.split("-")
    if len(parts) != 6 or f"{parts[0]}-" != TICKET_PREFIX:
        return None
    try:
        return int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None


def _write_held(fd: int, held: int) -> None:
    """A ticket says its program holds ``held`` CPUs (its size), and is fresh."""
    os.ftruncate(fd, held)
    os.utime(fd)  # ftruncate to the same size changes no time


def _write_held_at(path: str, held: int) -> None:
    """:func:`_write_held` on a ticket of this program found by its name."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # its waiter was served meanwhile
    try:
        info = os.fstat(fd)
        if info.st_size != held:  # its waiter alone says it is fresh
            os.ftruncate(fd, held)
            os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
    finally:
        os.close(fd)


def _make_private(folder: Path) -> bool:
    """Make ``folder`` 0700 if missing; False if it cannot be, or if the one
    there is not a private folder of this user (nothing is queued there)."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return True  # removed by the last waiter out just now: make it again
    except OSError:
        return False
    return is_private_dir(info)


def remove_abandoned(parent: Path, prefix: str = TRANSIENT_PREFIX) -> list[Path]:
    """Remove what waiters killed while waiting left in the transient queue
    folders ``parent/<prefix>*``: their tickets once :data:`STALE` and not
    locked, then the folders left empty. Returns the folders removed."""
    try:
        with os.scandir(parent) as entries:
            folders = [e.path for e in entries if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    now = time.time()
    for folder in folders:
        with contextlib.suppress(OSError), os.scandir(folder) as tickets:
            for entry in tickets:
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE:
                        _remove_if_unlocked(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(folder)
            removed.append(Path(folder))
    return removed


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
