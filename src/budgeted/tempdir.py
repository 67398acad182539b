"""Where memory-mapped arrays go, and why; private folders; the leftover search.

Order, decided for every array at the moment it is dumped: an explicit
``temp_folder``, else ``JOBLIB_TEMP_FOLDER``, else ``/dev/shm`` when its free
space covers that array plus :data:`SHM_MARGIN`, else the system temp dir.
joblib checks ``/dev/shm`` for a fixed 2 GB once; here the check is against
the array itself (joblib #168, #604, #513), and falling back is logged on
the ``budgeted`` logger.

Folders are created here, mode 0700 whatever the umask, with joblib's
unguessable names (``joblib_memmapping_folder_<pid>_<uuid>_<uuid>``); joblib
writes the files, mode 0600. A folder whose creating process is gone (a
parent killed with SIGKILL) is removed by the next budgeted process to start
a pool (joblib #198); a live process's folder is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .leftovers import LEFTOVERS, SHM, pid_alive, shm_usable, sweep

__all__ = [
    "SHM_MARGIN",
    "check_folder",
    "choose_temp_folder",
    "describe_temp_folder",
    "free_space",
    "make_private_folder",
    "remove_stale_folders",
    "remove_stale_once",
    "stale_search_dirs",
]

logger = logging.getLogger("budgeted")

#: Free space kept on /dev/shm beyond the array being dumped (bytes).
SHM_MARGIN = 1 << 30
TEMP_FOLDER_VAR = "JOBLIB_TEMP_FOLDER"
FOLDER_MODE = stat.S_IRWXU  # 0700


def free_space(path: Path) -> int:
    """Free bytes on the file system holding ``path``.

    This is the probe :func:`choose_temp_folder` calls (looked up at call
    time, so tests can replace it to simulate a small ``/dev/shm``).
    """
    existing = next(p for p in (Path(path), *Path(path).parents) if p.exists())
    return shutil.disk_usage(existing).free  # a folder not created yet: its parent


def check_folder(path: str | os.PathLike, origin: str) -> Path:
    """Return ``path`` if memmaps can go there, else raise naming it.

    A folder that does not exist yet is accepted when it can be created (its
    nearest existing parent is a writable directory): joblib creates a
    missing ``temp_folder`` when it first dumps an array, and so do we
    (:func:`make_private_folder`).

    Parameters
    ----------
    path : path-like
        The folder (``~`` is expanded).
    origin : str
        Where it came from, for the message ("temp_folder", "JOBLIB_TEMP_FOLDER").

    Returns
    -------
    Path
        The absolute folder.

    Raises
    ------
    NotADirectoryError, PermissionError
    """
    folder = Path(os.path.expanduser(os.fspath(path))).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    where = "" if existing == folder else f" (nor can it be created in {existing})"
    if not existing.is_dir():
        msg = f"{origin} {str(folder)!r} is not a directory{where}"
        raise NotADirectoryError(msg)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{origin} {str(folder)!r} is not writable{where}")
    return folder


def configured_folder(
    temp_folder: str | os.PathLike | None = None, environ: Mapping | None = None
) -> tuple[Path, str] | None:
    """The folder the user chose (argument, else ``JOBLIB_TEMP_FOLDER``), checked.

    Returns None when the user chose nothing. Raises as :func:`check_folder`.
    """
    environ = os.environ if environ is None else environ
    if temp_folder is not None:
        return check_folder(temp_folder, "temp_folder"), "temp_folder argument"
    if environ.get(TEMP_FOLDER_VAR):
        return check_folder(environ[TEMP_FOLDER_VAR], TEMP_FOLDER_VAR), TEMP_FOLDER_VAR
    return None


def choose_temp_folder(
    temp_folder: str | os.PathLike | None = None,
    nbytes: int = 0,
    *,
    free_bytes: Callable[[Path], int] | None = None,
    environ: Mapping | None = None,
) -> tuple[Path, str]:
    """Pick the folder for a memory-mapped array of ``nbytes`` bytes.

    Parameters
    ----------
    temp_folder : path-like, optional
        Explicit choice; wins when given.
    nbytes : int, default=0
        Bytes about to be dumped.
    free_bytes : callable, optional
        Free space probe; default :func:`free_space` (looked up at call time).
    environ : mapping, optional
        Environment (default ``os.environ``).

    Returns
    -------
    (Path, str)
        The folder and the reason it was chosen.
    """
    chosen = configured_folder(temp_folder, environ)
    if chosen is not None:
        return chosen
    fallback = Path(tempfile.gettempdir())
    if not shm_usable():
        return fallback, "no writable /dev/shm"
    probe = free_space if free_bytes is None else free_bytes
    free = probe(SHM)
    if free >= nbytes + SHM_MARGIN:
        return SHM, "/dev/shm has room"
    logger.info(
        "/dev/shm has %d bytes free, fewer than the %d to dump plus a %d margin:"
        " memory-mapping in %s instead",
        free,
        nbytes,
        SHM_MARGIN,
        fallback,
    )
    return fallback, "/dev/shm too small"


def describe_temp_folder(temp_folder=None, nbytes: int = 0) -> dict:
    """The folder memmaps would use now, why, and the free space.

    Returns
    -------
    dict
        ``path``, ``reason``, ``free_bytes`` (of ``path``), and, when the
        choice depends on ``/dev/shm``'s free space, ``shm_max_bytes``: the
        largest array still dumped there (larger ones go to ``fallback``).
    """
    folder, reason = choose_temp_folder(temp_folder, nbytes)
    report = {"path": str(folder), "reason": reason, "free_bytes": free_space(folder)}
    if configured_folder(temp_folder) is None and shm_usable():
        report["shm_max_bytes"] = max(free_space(SHM) - SHM_MARGIN, 0)
        report["fallback"] = tempfile.gettempdir()
    return report


def make_private_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` with mode 0700 whatever the umask; fail if it exists.

    Failing on an existing path means nobody can pre-create (and so own or
    watch) the folder under the name we chose. Missing parents (a
    ``temp_folder`` that does not exist yet) are created, as joblib does.
    """
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)  # a new temp_folder
    os.mkdir(folder, FOLDER_MODE)
    os.chmod(folder, FOLDER_MODE)
    return folder


def remove_stale_folders(
    directories: Iterable[str | os.PathLike],
    alive: Callable[[int], bool] = pid_alive,
) -> list[Path]:
    """Remove what processes that are gone left in ``directories``.

    Every kind of :data:`budgeted.leftovers.LEFTOVERS`: joblib's memmap
    folders, loky's semaphores (in ``/dev/shm``), budgeted's boards, pmatmat
    files and jobserver holdings folders; only when they belong to this user
    and their creator's PID is not alive.

    Parameters
    ----------
    directories : iterable of path-like
        Where to look (missing ones are skipped).
    alive : callable, optional
        ``alive(pid) -> bool`` (injected by tests).

    Returns
    -------
    list of Path
        What was removed.
    """
    removed = sweep(directories, LEFTOVERS, alive)
    if removed:
        logger.info("removed %d leftovers of processes that are gone", len(removed))
    return removed


_searched: set[Path] = set()


def stale_search_dirs(temp_folder=None) -> set[Path]:
    """Every folder a pool of this configuration may leave files in.

    A configured folder that cannot be used is left out: searching is
    housekeeping, and whatever writes there reports the folder.
    """
    dirs = {SHM, Path(tempfile.gettempdir())}
    with contextlib.suppress(OSError):  # check_folder's errors
        chosen = configured_folder(temp_folder)
        if chosen is not None:
            dirs.add(chosen[0])
    return dirs


def remove_stale_once(temp_folder=None) -> list[Path]:
    """:func:`remove_stale_folders` in every folder this configuration may use.

    Each folder is searched once per process (the first ``Parallel`` call
    there): the search lists whole folders, too slow for every call.
    """
    new = stale_search_dirs(temp_folder) - _searched
    _searched.update(new)
    return remove_stale_folders(new)
