"""Files and folders left behind by processes that are gone: one rule.

Everything budgeted (and joblib, and loky) leaves in a shared folder carries
the PID of the process that made it in its name, ``<prefix><pid><sep>...``;
:data:`LEFTOVERS` lists every kind. A process killed with SIGKILL cannot
clean up, so the next one removes what such a process left, and only that:
an entry is removed when its creator is gone *and* it belongs to this user;
a live process's files are never touched. :func:`shared_dir` is where the
small shared files go (``/dev/shm`` when usable).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "LEFTOVERS",
    "Leftover",
    "SHM",
    "leftover_name",
    "pid_alive",
    "remove_leftovers",
    "shared_dir",
    "shm_usable",
    "sweep",
]

SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Leftover:
    """One kind of entry a process leaves in a shared folder.

    Attributes
    ----------
    prefix : str
        What its name starts with; the creator's PID follows.
    separator : str
        What follows the PID.
    shm_only : bool
        Made only in ``/dev/shm`` (loky's semaphores).
    """

    prefix: str
    separator: str = "-"
    shm_only: bool = False

    @property
    def pattern(self) -> re.Pattern[str]:
        """Matches the names of this kind; its first group is the PID."""
        return re.compile(rf"{re.escape(self.prefix)}(\d+){re.escape(self.separator)}")


BOARD = Leftover("budgeted-board-")
PMATMAT = Leftover("budgeted-pmatmat-")
HOLDERS = Leftover("budgeted-holders-")
MEMMAP_FOLDER = Leftover("joblib_memmapping_folder_", "_")
LOKY_SEMAPHORE = Leftover("sem.loky-", shm_only=True)
#: Everything the sweep removes (budgeted's own, then joblib's and loky's).
LEFTOVERS = (BOARD, PMATMAT, HOLDERS, MEMMAP_FOLDER, LOKY_SEMAPHORE)


def leftover_name(kind: Leftover) -> str:
    """A fresh name of ``kind`` for this process: prefix, PID, random part."""
    return f"{kind.prefix}{os.getpid()}{kind.separator}{secrets.token_hex(8)}"


def shm_usable() -> bool:
    """Whether ``/dev/shm`` is a folder this process can create files in."""
    return SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK)


def shared_dir() -> Path:
    """Where small shared files go: ``/dev/shm`` when usable, else temp."""
    return SHM if shm_usable() else Path(tempfile.gettempdir())


def sweep(
    directories: Iterable[str | os.PathLike],
    kinds: Iterable[Leftover] = LEFTOVERS,
    alive: Callable[[int], bool] | None = None,
) -> list[Path]:
    """Remove every leftover of ``kinds`` in ``directories``; return them."""
    alive = pid_alive if alive is None else alive
    removed = []
    for directory in dict.fromkeys(Path(d) for d in directories):
        for kind in kinds:
            if not kind.shm_only or directory == SHM:
                removed += remove_leftovers(directory, kind.pattern, alive)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # alive, owned by someone else
        return True


def remove_leftovers(
    directory: str | os.PathLike,
    pattern: re.Pattern[str],
    alive: Callable[[int], bool] = pid_alive,
) -> list[Path]:
    """Remove the entries of ``directory`` left by processes that are gone.

    Parameters
    ----------
    directory : path-like
        Where to look (a missing folder has nothing to remove).
    pattern : re.Pattern
        Matches the names to consider; its first group is the creator's PID.
    alive : callable, optional
        ``alive(pid) -> bool`` (injected by tests).

    Returns
    -------
    list of Path
        What was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match and not alive(int(match.group(1))) and _owned_by_me(path):
            _remove(path)
            removed.append(path)
    return removed


def is_private_dir(info: os.stat_result) -> bool:
    """Whether ``info`` (an ``lstat``) is a directory of this user that no
    one else may enter or write (a user's private folder of shared files)."""
    mode = info.st_mode
    return stat.S_ISDIR(mode) and info.st_uid == os.getuid() and not mode & 0o077


def _owned_by_me(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid()
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
