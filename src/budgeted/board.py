"""The board: which worker slots are busy and how many batches are in flight.

One small table of int32 cells, shared by the parent and its workers::

    cell 0      batches in flight (written by the parent only; -1 while the
                parent is still dispatching the first batches of a call)
    cell 1      number of slots
    cell 2      holder of the program's implicit jobserver token (0: free)
    cell 3+i    owner of slot i (a PID in process mode, a thread id in
                thread mode; 0 when free)
    cell 3+n+i  host CPUs the batch in slot i holds (written by its owner;
                their sum is what the program holds, for the queue of
                waiters: :mod:`budgeted.hostwide.queue`)
    cell 3+2n+i threads of slot i waiting for a host-wide token (their sum:
                the program's; a dead owner's count goes with its slot)

Process mode keeps the table in a small file in ``/dev/shm`` (else the temp
dir) mapped by every process and locked with ``flock``: no semaphore, no
``SharedMemory`` segment, so nothing for the resource tracker to report, and a
name carrying the parent's PID so a file left by a killed parent is removed by
the next one. Thread mode keeps it in a ``bytearray`` behind a
:class:`threading.Lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from .leftovers import BOARD, leftover_name, shared_dir, sweep

__all__ = ["Board", "InFlight", "open_board", "remove_stale_boards"]

_IN_FLIGHT, _N_SLOTS, _IMPLICIT, _FIRST_SLOT = 0, 1, 2, 3
_PER_SLOT = 3  # cells per slot: owner, CPUs held, threads waiting
_CELL = 4  # bytes per int32 cell
DISPATCHING = -1


def _size(n_slots: int) -> int:
    """Bytes of a board of ``n_slots`` slots."""
    return _CELL * (_FIRST_SLOT + _PER_SLOT * n_slots)


def board_dir() -> Path:
    """Where process-mode boards live: ``/dev/shm`` when usable, else temp."""
    return shared_dir()


class Board:
    """Slot table shared by a pool's tasks (see the module docstring).

    Parameters
    ----------
    buffer : writable buffer
        At least ``4 * (3 + 3 * n_slots)`` bytes.
    lock : context manager
        Serialises slot claims.
    path : Path, optional
        The file behind ``buffer`` (process mode).
    """

    def __init__(self, buffer, lock, path: Path | None = None) -> None:
        self._buffer = buffer
        self._cells = memoryview(buffer).cast("i")
        self._lock = lock
        self.path = path
        self.closed = False

    @classmethod
    def in_process(cls, n_slots: int) -> Board:
        """A board for threads of this process."""
        board = cls(bytearray(_size(n_slots)), threading.Lock())
        board._cells[_N_SLOTS] = n_slots
        return board

    @classmethod
    def create_file(cls, n_slots: int, directory: Path | None = None) -> Board:
        """A new board file (mode 0600) for worker processes, made by the parent."""
        directory = board_dir() if directory is None else directory
        remove_stale_boards(directory)
        path = directory / leftover_name(BOARD)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, _size(n_slots))
            board = cls._from_fd(fd, path)
        finally:
            os.close(fd)
        board._cells[_N_SLOTS] = n_slots
        # A call that fails after configure (joblib checks some arguments
        # only then) never terminates its backend: the file goes with it.
        board._remove_file = weakref.finalize(board, _unlink, path)
        return board

    @classmethod
    def _from_fd(cls, fd: int, path: Path) -> Board:
        size = os.fstat(fd).st_size
        buffer = mmap.mmap(fd, size)
        lock_fd = os.dup(fd)
        return cls(buffer, _FileLock(lock_fd), path)

    @property
    def n_slots(self) -> int:
        """Number of worker slots."""
        return self._cells[_N_SLOTS]

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet finished (``-1``: still dispatching)."""
        return self._cells[_IN_FLIGHT]

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._cells[_IN_FLIGHT] = value

    def wait_dispatched(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the parent to finish its first dispatch."""
        deadline = time.monotonic() + timeout
        while self.in_flight == DISPATCHING and time.monotonic() < deadline:
            time.sleep(0.0005)
        return self.in_flight

    def claim(self, owner: int, alive: Callable[[int], bool] | None = None) -> int:
        """Take the lowest free slot for ``owner`` and return its index.

        A slot whose owner is dead (``alive(owner)`` is False) counts as free.
        With every slot busy (more concurrent tasks than slots), the last
        slot is shared.
        """
        with self._lock:
            owners = self._owners()
            free = [i for i, o in enumerate(owners) if o == 0]
            if not free and alive is not None:
                free = [i for i, o in enumerate(owners) if not alive(o)]
            slot = free[0] if free else len(owners) - 1
            if free:  # a dead owner's CPUs are no longer held
                self._cells[self._held_cell(slot)] = 0
            if free and owners[slot]:  # nor is it waiting
                self._cells[self._waiting_cell(slot)] = 0
            self._cells[_FIRST_SLOT + slot] = owner
            return slot

    def take_implicit(
        self, owner: int, alive: Callable[[int], bool] | None = None
    ) -> bool:
        """Hold the program's implicit token for ``owner`` if it is free.

        A holder that died (``alive(holder)`` is False) no longer holds it.
        """
        with self._lock:
            holder = self._cells[_IMPLICIT]
            if holder and holder != owner and (alive is None or alive(holder)):
                return False
            self._cells[_IMPLICIT] = owner
            return True

    def give_implicit(self, owner: int) -> None:
        """Free the implicit token if ``owner`` holds it."""
        with self._lock:
            if self._cells[_IMPLICIT] == owner:
                self._cells[_IMPLICIT] = 0

    def release(self, slot: int, owner: int) -> None:
        """Free ``slot`` if ``owner`` still holds it."""
        with self._lock:
            if self._cells[_FIRST_SLOT + slot] == owner:
                self._cells[_FIRST_SLOT + slot] = 0
                self._cells[self._held_cell(slot)] = 0

    def set_held(self, slot: int, cpus: int) -> None:
        """The batch in ``slot`` holds ``cpus`` host CPUs now."""
        self._cells[self._held_cell(slot)] = cpus

    def held(self) -> int:
        """Host CPUs the program's batches hold now (all slots)."""
        first = _FIRST_SLOT + self.n_slots
        return sum(self._cells[first : first + self.n_slots])

    def add_waiting(self, slot: int, change: int) -> None:
        """``change`` threads of ``slot`` began (+) or ended (-) a wait."""
        cell = self._waiting_cell(slot)
        with self._lock:
            self._cells[cell] = max(0, self._cells[cell] + change)

    @property
    def waiting(self) -> int:
        """The program's threads waiting for a host-wide token now."""
        first = _FIRST_SLOT + 2 * self.n_slots
        return sum(self._cells[first : first + self.n_slots])

    def _held_cell(self, slot: int) -> int:
        return _FIRST_SLOT + self.n_slots + slot

    def _waiting_cell(self, slot: int) -> int:
        return _FIRST_SLOT + 2 * self.n_slots + slot

    def rank(self, slot: int) -> tuple[int, int]:
        """Return (busy slots below ``slot``, busy slots in all)."""
        busy = [o != 0 for o in self._owners()]
        return sum(busy[:slot]), sum(busy)

    def _owners(self) -> list[int]:
        return list(self._cells[_FIRST_SLOT : _FIRST_SLOT + self.n_slots])

    def close(self, unlink: bool = False) -> None:
        """Release the mapping; with ``unlink``, delete the file too."""
        self.closed = True
        self._cells.release()
        if isinstance(self._lock, _FileLock):
            self._lock.close()
        if isinstance(self._buffer, mmap.mmap):
            self._buffer.close()
        if unlink and self.path is not None:
            _unlink(self.path)


class InFlight:
    """The parent's count of a pool's batches in flight, published on its board.

    While a call dispatches its first batches the board says
    :data:`DISPATCHING`, so batches that start meanwhile take their static
    share rather than a share of a count still growing.
    """

    def __init__(self, board: Board) -> None:
        self.board = board
        self._count = 0
        self._dispatching = False
        self._lock = threading.Lock()

    def start_call(self) -> None:
        """A call starts: its first batches are being dispatched."""
        with self._lock:
            self._count, self._dispatching = 0, True
            self._publish(DISPATCHING)

    def _publish(self, value: int) -> None:
        # a batch may finish after its call closed the board: nothing to say
        with contextlib.suppress(ValueError):  # a released mapping
            if not self.board.closed:
                self.board.in_flight = value

    def dispatched(self) -> None:
        """The first dispatch is over (or the call is): publish the count."""
        self.add(0, dispatching=False)

    def add(self, change: int, dispatching: bool | None = None) -> None:
        """One batch more (+1) or fewer (-1) in flight."""
        with self._lock:
            self._count += change
            if dispatching is not None:
                self._dispatching = dispatching
            if not self._dispatching:
                self._publish(max(self._count, 0))


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class _FileLock:
    """``flock`` on a file, plus a thread lock (flock does not exclude threads)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._thread_lock = threading.Lock()

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        os.close(self._fd)


_OPEN_BOARDS: OrderedDict[str, Board] = OrderedDict()
_OPEN_LOCK = threading.Lock()
_MAX_OPEN = 8


def open_board(path: str) -> Board:
    """The board at ``path``, mapped once per process (a worker's cache)."""
    with _OPEN_LOCK:
        board = _OPEN_BOARDS.get(path)
        if board is None:
            fd = os.open(path, os.O_RDWR)
            try:
                board = Board._from_fd(fd, Path(path))
            finally:
                os.close(fd)
            _OPEN_BOARDS[path] = board
            while len(_OPEN_BOARDS) > _MAX_OPEN:
                _OPEN_BOARDS.popitem(last=False)[1].close()
        _OPEN_BOARDS.move_to_end(path)
        return board


def remove_stale_boards(directory: Path) -> list[Path]:
    """Delete board files whose creating process is gone; return them."""
    return sweep([directory], [BOARD])
