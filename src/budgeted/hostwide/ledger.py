"""The host ledger: CPUs as locked files, shared by a user's programs.

::

    /dev/shm/budgeted-ledger-<uid>/     (0700; or BUDGETED_LEDGER=PATH)
        token-0  token-1  ...           one file per extra token
        flock(LOCK_EX | LOCK_NB) on a descriptor kept open = token held
        the kernel drops the lock when its holder dies: no token can leak
        wait-<ticket>-<program>-<usable>-<pid>-<thread>
                                        a thread waiting for a token (queue)
        bell                            rung by every release: the waiters
                                        sleep on the folder (inotify, bell)

A program that sees ``u`` usable CPUs uses the tokens ``0 .. u-1``: every
CPU it uses is a locked file (a ledger program owns no implicit token), so
all programs together never use more CPUs than the ledger has tokens.
Programs that disagree on ``u`` (different affinity masks or cgroups) share
the low indices: none ever uses more CPUs than it sees, and the host total
stays below the largest view. Scanning starts at the highest index, so the
programs that see more CPUs take first the tokens the others cannot use. A
program that finds no free token sleeps until a release rings the folder's
bell, a holder exits (also one killed) or a waiter ahead is served
(:mod:`budgeted.hostwide.bell`, inotify), and tries again. Holders are read
from ``/proc/locks`` for :meth:`HostLedger.describe`.

Waiting programs are served the one holding the fewest CPUs first, then first
come, first served, through ticket files in the same folder
(:mod:`budgeted.hostwide.queue`); a take leaves to waiters ahead the tokens
they can use, and may take the others.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from ..leftovers import is_private_dir, shared_dir
from .bell import Bell
from .queue import WaitQueue, remove_abandoned
from .source import TokenSource

__all__ = [
    "HostLedger",
    "LedgerUnusable",
    "check_ledger_folder",
    "default_folder",
    "private_folder",
]

_PROC_LOCKS = Path("/proc/locks")


class LedgerUnusable(OSError):
    """The ledger folder is missing, unsafe or not writable."""


def default_folder() -> Path:
    """``budgeted-ledger-<uid>`` under /dev/shm (a tmpfs), else the temp dir."""
    return shared_dir() / f"budgeted-ledger-{os.getuid()}"


def private_folder() -> Path:
    """:func:`default_folder`, made 0700 if missing and checked private, with
    what make jobservers' waiters killed there left removed
    (:func:`~budgeted.hostwide.queue.remove_abandoned`).

    Raises
    ------
    LedgerUnusable
        When it cannot be made, or is not a private folder of this user.
    """
    folder = default_folder()
    _create_private(folder)
    check_ledger_folder(folder, private=True)
    remove_abandoned(folder)
    return folder


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
    if private and not is_private_dir(info):
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
        private = folder is None
        if private:
            self.folder = private_folder()
        else:
            self.folder = Path(folder)
            check_ledger_folder(self.folder, private=False)
        self.n_tokens = max(0, n_tokens)
        self._file_mode = 0o600 if private else 0o640
        self.queue = WaitQueue(
            self.folder,
            self.program,
            self._file_mode,
            usable=self.n_tokens,
            process_held=lambda: self.held,
        )
        self._floor = 0  # tokens below it are kept for older waiters
        self._fds: dict[int, int] = {}
        self._bell = Bell(self.folder, self._file_mode, self.n_tokens)

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

    def _may_take(self) -> bool:
        self._bell.mark()  # what happens from now on wakes this thread's wait
        # older waiters keep the tokens they can use; the others may be taken
        self._floor = self.queue.reserved()
        return self._floor < self.n_tokens

    def _take_into(self, held: list) -> bool:
        mine = set(held)
        for index in range(self.n_tokens - 1, self._floor - 1, -1):
            if index in mine:
                continue  # flock again on our own descriptor would "succeed"
            try:
                fcntl.flock(self._token_fd(index), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            held.append(index)
            self._bell.served()
            return True
        return False

    def _give(self, handle: object) -> None:
        fcntl.flock(self._fds[handle], fcntl.LOCK_UN)

    def _usable(self) -> bool:
        return self.n_tokens > 0  # one CPU: only the implicit token, never wait

    def _wait(self, timeout: float | None) -> None:
        self._bell.sleep(timeout)

    def release(self, count: int | None = None) -> int:
        given = super().release(count)
        if given:
            self._bell.ring()  # the waiters look now
        return given

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
            waiting=self.queue.waiters(),
        )
        return report

    def close(self) -> None:
        super().close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._bell.close()

    def _after_fork(self) -> None:
        # The child's descriptors share the parent's locks: unlocking them
        # would free the parent's tokens, and closing them is harmless.
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


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
