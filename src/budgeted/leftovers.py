"""Files and folders left behind by processes that are gone.

Everything budgeted (and joblib, and loky) leaves in a shared folder carries
the PID of the process that made it in its name. A process killed with
SIGKILL cannot clean up, so the next one removes what such a process left,
and only that: an entry is removed when its creator is gone *and* it belongs
to this user; a live process's files are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = ["pid_alive", "remove_leftovers"]


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
