"""Arrays in memory-mapped files that worker processes open by path.

Plain files in :func:`budgeted.tempdir.choose_temp_folder` (``/dev/shm`` when
it has room) mapped with :mod:`mmap`, rather than
:class:`multiprocessing.shared_memory.SharedMemory`:

* a result can be handed to the caller *without a copy*: its file is unlinked
  once the workers are done, and the mapping lives as long as the array (a
  ``SharedMemory`` cannot be closed while an array uses its buffer);
* no resource tracker is involved, so attaching in a worker registers nothing
  (no false "leaked shared_memory" warnings before Python 3.13).

The parent creates and unlinks every file; workers only open and map them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..leftovers import PMATMAT, sweep
from ..tempdir import choose_temp_folder

__all__ = [
    "ArraySpec",
    "InputArena",
    "create_array",
    "open_array",
    "remove_stale",
    "unlink",
]

PREFIX = PMATMAT.prefix


@dataclass(frozen=True)
class ArraySpec:
    """Where a C-ordered 2-D array lives; what travels to workers.

    C order, like ``L @ A``: copying ``A`` in is a plain memory copy, and a
    column block of it is still a matrix BLAS takes without a copy.
    """

    path: str
    shape: tuple[int, int]
    dtype: str

    @property
    def nbytes(self) -> int:
        return max(1, int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize)


def _map(path: str, nbytes: int, create: bool) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        return mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)


def view_array(buffer, spec: ArraySpec) -> np.ndarray:
    count = int(np.prod(spec.shape))
    flat = np.frombuffer(buffer, dtype=spec.dtype, count=count)
    return flat.reshape(spec.shape)


def create_array(shape: tuple[int, int], dtype) -> tuple[ArraySpec, np.ndarray]:
    """A new file-backed array (uninitialised) and its spec.

    The file stays until :func:`unlink`; the array stays valid after that.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    folder, _ = choose_temp_folder(nbytes=nbytes)
    # The creator's pid, to remove what a killed parent left behind, and a
    # fresh random part, so a worker never mistakes a new file for an old one.
    prefix = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}-"
    fd, path = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    spec = ArraySpec(path, (int(shape[0]), int(shape[1])), np.dtype(dtype).str)
    return spec, view_array(_map(path, spec.nbytes, create=True), spec)


def remove_stale(folder: Path) -> list[Path]:
    """Delete files of this module whose creating process is gone; return them."""
    return sweep([folder], [PMATMAT])


def open_array(spec: ArraySpec) -> np.ndarray:
    """Map an array the parent created (in a worker)."""
    return view_array(_map(spec.path, spec.nbytes, create=False), spec)


def unlink(spec: ArraySpec | None) -> None:
    """Remove the file (mappings stay valid until their arrays are freed)."""
    if spec is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.path)


class InputArena:
    """One reusable file for operands, grown when an operand does not fit.

    Reusing it spares page faults on every product; workers keep it mapped.
    """

    def __init__(self) -> None:
        self._spec: ArraySpec | None = None
        self._buffer: np.ndarray | None = None
        self._cleaned = False  # stale files of killed parents: removed once

    def put(self, X: np.ndarray) -> ArraySpec:
        """Copy ``X`` into the arena; return where workers find it."""
        needed = max(1, X.size * X.dtype.itemsize)
        if self._buffer is None or self._buffer.nbytes < needed:
            self.close()
            if not self._cleaned:
                remove_stale(choose_temp_folder(nbytes=needed)[0])
                self._cleaned = True
            spec, self._buffer = create_array((needed, 1), np.uint8)
            self._spec = spec
        spec = ArraySpec(
            self._spec.path, (int(X.shape[0]), int(X.shape[1])), X.dtype.str
        )
        view_array(self._buffer, spec)[...] = X
        return spec

    def close(self) -> None:
        """Remove the file."""
        unlink(self._spec)
        self._spec = self._buffer = None
