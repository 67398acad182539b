"""Where memory-mapped arrays go, and why.

Order: an explicit ``temp_folder``, else ``JOBLIB_TEMP_FOLDER``, else
``/dev/shm`` when its free space covers what is about to be dumped plus a
safety margin, else the system temp dir. joblib checks ``/dev/shm`` for a
fixed 2 GB once; here the check is against the arrays themselves.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["choose_temp_folder", "describe_temp_folder"]

logger = logging.getLogger("budgeted")

SHM = Path("/dev/shm")
#: Free space kept on /dev/shm beyond the arrays themselves.
SHM_MARGIN = 1 << 30
TEMP_FOLDER_VAR = "JOBLIB_TEMP_FOLDER"


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_folder(path: str | os.PathLike, origin: str) -> Path:
    """Return ``path`` if it is a writable directory, else raise naming it.

    Parameters
    ----------
    path : path-like
        The folder.
    origin : str
        Where it came from, for the message ("temp_folder", "JOBLIB_TEMP_FOLDER").

    Raises
    ------
    FileNotFoundError, NotADirectoryError, PermissionError
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{origin} {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{origin} {str(folder)!r} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{origin} {str(folder)!r} is not writable")
    return folder


def choose_temp_folder(
    temp_folder: str | os.PathLike | None = None,
    nbytes: int = 0,
    *,
    free_bytes: Callable[[Path], int] = _free_bytes,
    environ=None,
) -> tuple[Path, str]:
    """Pick the folder for memory-mapped arrays.

    Parameters
    ----------
    temp_folder : path-like, optional
        Explicit choice; wins when given.
    nbytes : int, default=0
        Bytes about to be dumped.
    free_bytes : callable, optional
        Free space probe (injected by tests).
    environ : mapping, optional
        Environment (default ``os.environ``).

    Returns
    -------
    (Path, str)
        The folder and the reason it was chosen.
    """
    environ = os.environ if environ is None else environ
    if temp_folder is not None:
        return check_folder(temp_folder, "temp_folder"), "temp_folder argument"
    if environ.get(TEMP_FOLDER_VAR):
        folder = check_folder(environ[TEMP_FOLDER_VAR], TEMP_FOLDER_VAR)
        return folder, TEMP_FOLDER_VAR
    if SHM.is_dir() and os.access(SHM, os.W_OK):
        free = free_bytes(SHM)
        if free >= nbytes + SHM_MARGIN:
            return SHM, "/dev/shm has room"
        logger.info(
            "/dev/shm has %d bytes free, fewer than the %d needed plus a %d margin:"
            " memory-mapping on disk instead",
            free,
            nbytes,
            SHM_MARGIN,
        )
        return Path(tempfile.gettempdir()), "/dev/shm too small"
    return Path(tempfile.gettempdir()), "no /dev/shm"


def describe_temp_folder(temp_folder=None, nbytes: int = 0) -> dict:
    """The folder memmaps would use now, why, and its free space."""
    folder, reason = choose_temp_folder(temp_folder, nbytes)
    return {"path": str(folder), "reason": reason, "free_bytes": _free_bytes(folder)}
