"""The host ledger: CPUs as locked files, shared by a user's programs.

::

    /dev/shm/budgeted-ledger-<uid>/     (0700; or BUDGETED_LEDGER=PATH)
        token-0  token-1  ...           one file per extra token
        flock(LOCK_EX | LOCK_NB) on a descriptor kept open = token held
        the kernel drops the lock when its holder dies: no token can leak
        wait-<ticket>-<program>-<pid>-<thread>
                                        a thread waiting for a token, its
                                        ticket the time it began to wait

A program that sees ``u`` usable CPUs uses the tokens ``0 .. u-1``: every
CPU it uses is a locked file (a ledger program owns no implicit token), so
all programs together never use more CPUs than the ledger has tokens.
Programs that disagree on ``u`` (different affinity masks or cgroups) share
the low indices: none ever uses more CPUs than it sees, and the host total
stays below the largest view. Scanning starts at the highest index, so the
programs that see more CPUs take first the tokens the others cannot use. A
program that finds no free token sleeps with a capped backoff
(:data:`BACKOFF`) and tries again: a freed token, also one freed by a killed
holder, is seen within 10 ms, and a waiter costs no measurable CPU. Holders
are read from ``/proc/locks`` for :meth:`HostLedger.describe`.

Waiting programs are served first come, first served. A thread that has to
wait puts a ticket file in the folder (locked, and touched at every look);
no one takes a free token while another program's thread holds an older
ticket, neither a waiter with a newer ticket nor a batch starting or growing
without waiting. So when a holder ends a batch, the token it gives back goes
to the program that waited longest, and programs that all want every CPU
take turns, batch by batch. Threads of one program do not queue behind
each other (the order inside a program changes nothing between programs).
A ticket counts while it is fresh (:data:`FRESH`): a stopped program
(Ctrl-Z) holds no one back; the files of waiters that died are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..leftovers import shared_dir
from .source import TokenSource

__all__ = [
    "BACKOFF",
    "FRESH",
    "HostLedger",
    "LedgerUnusable",
    "check_ledger_folder",
    "default_folder",
]

#: First and longest sleep (seconds) of a program waiting for a token.
BACKOFF = (0.001, 0.01)
#: A waiter's ticket holds the others back while its file was touched within
#: this many seconds (a waiter touches it every :data:`BACKOFF` at most).
FRESH = 0.5
#: A ticket file untouched this long, and not locked, is a dead waiter's.
STALE = 30.0
_TICKET = "wait-"
_PROC_LOCKS = Path("/proc/locks")


class LedgerUnusable(OSError):
    """The ledger folder is missing, unsafe or not writable."""


def default_folder() -> Path:
    """``budgeted-ledger-<uid>`` under /dev/shm (a tmpfs), else the temp dir."""
    return shared_dir() / f"budgeted-ledger-{os.getuid()}"


def _create_private(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LedgerUnusable(
            f"cannot create ledger folder {folder}: {exc.strerror}"
        ) from None


def check_ledger_folder(folder: Path, private: bool) -> None:
    """Refuse a ledger folder that another user could tamper with.

    A private folder (the default one) must be a directory owned by us that
    no one else can write. A shared one (``BUDGETED_LEDGER=PATH``) must be a
    directory we can write; if others can write it too, it must have the
    sticky bit (so no one can delete another's token files) unless it is
    only group-writable with the setgid bit (a team folder).

    Raises
    ------
    LedgerUnusable
        Naming the folder and the problem.
    """
    try:
        info = os.lstat(folder)
    except OSError as exc:
        raise LedgerUnusable(f"ledger folder {folder}: {exc.strerror}") from None
    mode = info.st_mode
    if not stat.S_ISDIR(mode):
        raise LedgerUnusable(f"ledger folder {folder} is not a directory")
    if private and (info.st_uid != os.getuid() or mode & 0o077):
        owner, bits = info.st_uid, f"{mode & 0o777:o}"
        msg = f"ledger folder {folder} is not private (owner {owner}, mode {bits})"
        raise LedgerUnusable(msg)
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise LedgerUnusable(
            f"ledger folder {folder} is world-writable without the sticky bit"
        )
    if mode & stat.S_IWGRP and not mode & (stat.S_ISVTX | stat.S_ISGID):
        msg = (
            f"ledger folder {folder} is group-writable without the setgid or sticky bit"
        )
        raise LedgerUnusable(msg)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LedgerUnusable(f"ledger folder {folder} is not writable by this user")


class HostLedger(TokenSource):
    """Tokens of a host ledger (see the module docstring).

    Parameters
    ----------
    n_tokens : int
        Tokens this program may use: its usable CPUs (every CPU it uses is a
        locked file, so programs together never use more than the ledger's
        size), or its usable CPUs minus one with ``implicit``.
    folder : path, optional
        A shared ledger folder; by default :func:`default_folder`, created
        0700 if missing.
    implicit : bool, default=False
        Whether the program also owns an implicit CPU outside the ledger.
    program : int, optional
        The program this process works for (its main process's PID, the
        default this process's): its threads do not queue behind each other.
    """

    kind = "ledger"

    def __init__(
        self,
        n_tokens: int,
        folder: str | os.PathLike | None = None,
        implicit: bool = False,
        program: int | None = None,
    ) -> None:
        super().__init__()
        self.implicit = implicit
        self.program = os.getpid() if program is None else program
        self._local = threading.local()  # this thread's ticket, while waiting
        private = folder is None
        self.folder = default_folder() if private else Path(folder)
        if private:
            _create_private(self.folder)
        check_ledger_folder(self.folder, private)
        self.n_tokens = max(0, n_tokens)
        self._file_mode = 0o600 if private else 0o640
        self._fds: dict[int, int] = {}
        self._delay = BACKOFF[0]

    def _token_fd(self, index: int) -> int:
        fd = self._fds.get(index)
        if fd is None:
            fd = self._open_token(self.folder / f"token-{index}")
            self._fds[index] = fd
        return fd

    def _open_token(self, path: Path) -> int:
        """Open a token file read-only (flock needs no more), creating it if need be."""
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, self._file_mode)
        except FileExistsError:  # created by another program just now
            return os.open(path, flags)
        os.fchmod(fd, self._file_mode)  # whatever the umask: others must open it
        return fd

    def _take_into(self, held: list) -> bool:
        mine = set(held)
        for index in range(self.n_tokens - 1, -1, -1):
            if index in mine:
                continue  # flock again on our own descriptor would "succeed"
            try:
                fcntl.flock(self._token_fd(index), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            held.append(index)
            self._delay = BACKOFF[0]
            return True
        return False

    def _give(self, handle: object) -> None:
        fcntl.flock(self._fds[handle], fcntl.LOCK_UN)

    def _usable(self) -> bool:
        return self.n_tokens > 0  # one CPU: only the implicit token, never wait

    def _wait(self, timeout: float | None) -> None:
        ticket = getattr(self._local, "ticket", None)
        if ticket is not None:
            with contextlib.suppress(OSError):
                os.utime(ticket[1])  # still waiting: the ticket stays fresh
        delay = self._delay if timeout is None else min(self._delay, timeout)
        time.sleep(delay)
        self._delay = min(self._delay * 2, BACKOFF[1])

    # -- the queue of waiters ------------------------------------------------
    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside the block this thread has a ticket: programs that come to
        wait later, or take without waiting, let it go first."""
        if getattr(self._local, "ticket", None) is not None:
            yield  # an outer block keeps the thread's place
            return
        number = time.monotonic_ns()  # one clock for every process
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

    def _open_ticket(self, name: str) -> int | None:
        """Create the ticket file, locked before it is visible; None if impossible."""
        hidden = self.folder / f".{name}"
        flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(hidden, flags, self._file_mode)
        except OSError:
            return None
        try:
            os.fchmod(fd, self._file_mode)
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while waiting: alive
            os.rename(hidden, self.folder / name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(hidden)
            os.close(fd)
            return None
        return fd

    def _may_take(self) -> bool:
        ticket = getattr(self._local, "ticket", None)
        return not self._waited_longer(None if ticket is None else ticket[0])

    def _waited_longer(self, mine: int | None) -> bool:
        """Whether a thread of another program holds a fresh ticket older than
        ``mine`` (None: any fresh ticket); dead waiters' files are removed."""
        now = time.time()
        try:
            entries = os.scandir(self.folder)
        except OSError:
            return False
        with entries:
            for entry in entries:
                ticket = _parse_ticket(entry.name)
                if ticket is None and not entry.name.startswith(f".{_TICKET}"):
                    continue  # a token file (a hidden ticket may be a leftover)
                if ticket is not None and not self._ahead(ticket, mine):
                    continue
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if ticket and age < FRESH:
                    return True
                if age > STALE:
                    _remove_if_unlocked(entry.path)  # its waiter died
        return False

    def _ahead(self, ticket: tuple[int, int], mine: int | None) -> bool:
        """Whether ``ticket`` (number, program) goes before this thread."""
        number, program = ticket
        return program != self.program and (mine is None or number < mine)

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

    def holders(self) -> dict[int, int]:
        """PID -> tokens it holds, for this ledger's files (from /proc/locks)."""
        inodes = {}
        for index in range(self.n_tokens):
            try:
                info = os.stat(self.folder / f"token-{index}")
            except OSError:
                continue
            inodes[(os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)] = index
        counts: dict[int, int] = {}
        for pid, key in _flock_holders():
            if key in inodes:
                counts[pid] = counts.get(pid, 0) + 1
        return counts

    def describe(self) -> dict:
        report = super().describe()
        holders = self.holders()
        report.update(
            path=str(self.folder),
            tokens=self.n_tokens,
            in_use=sum(holders.values()),
            holders=holders,
            waiting=self.waiters(),
        )
        return report

    def close(self) -> None:
        super().close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def _after_fork(self) -> None:
        # The child's descriptors share the parent's locks: unlocking them
        # would free the parent's tokens, and closing them is harmless.
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


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


def _flock_holders() -> list[tuple[int, tuple[int, int, int]]]:
    """(pid, (major, minor, inode)) of every FLOCK lock on the host."""
    try:
        lines = _PROC_LOCKS.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[0].endswith("->"):
            continue
        major, minor, inode = fields[5].split(":")
        found.append((int(fields[4]), (int(major, 16), int(minor, 16), int(inode))))
    return found
