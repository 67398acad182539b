"""MPI pieces: node budgets, gathering blocks on the root, the MPI engine.

Run under ``mpiexec -n K python script.py``. Each rank computes one column
block (rank ``r`` gets block ``r`` of ``column_blocks(columns, K)``) under its
share of its node's CPUs, ``split_budget(cpus of the node, ranks on the
node)[rank on the node]``, and the root rank gathers the blocks with
``Gatherv`` in the blocks' own MPI datatype (float32 stays float32; complex
works). Blocks whose dtypes differ, or have no MPI datatype, are gathered as
pickles instead.

An error on one rank is an error on every rank: each step that can fail on
some ranks only (reading a file, checking an operand, a block's product) runs
in :func:`agree` before the next collective, so that no rank waits forever for
one that raised. An exception that escapes a rank outside those steps (say,
lazylinop's own shape check) is offered, by the uncaught-exception hook, to
the ranks waiting in a step; if none takes it within :data:`RESCUE_SECONDS`,
the hook aborts the job rather than leave it hanging.
"""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ..budget import check_n_cpus, split_budget
from ..cpus import usable_cpus
from ..threadenv import budget_scope, pinned_libraries
from .blocks import column_blocks
from .engines import OperatorSides
from .operators import requires

__all__ = [
    "RESCUE_SECONDS",
    "MPIEngine",
    "RankError",
    "agree",
    "gather_blocks",
    "node_budget",
    "world",
]

T = TypeVar("T")

#: How long an exception that escaped one rank waits for the others to take
#: it in an :func:`agree` step before the uncaught-exception hook aborts the job.
RESCUE_SECONDS = 10.0


def world():
    """``mpi4py.MPI.COMM_WORLD`` (imported here, with a clear error if absent)."""
    return requires("mpi4py.MPI", "mpi", "method='mpi'").COMM_WORLD


class RankError(RuntimeError):
    """Another rank failed with an exception that cannot be rebuilt here."""


class _RemoteTraceback(Exception):
    """The failing rank's traceback, chained under the exception other ranks raise."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


_SHARED = "_budgeted_mpi_shared"  # set on exceptions every rank already raises
_state: dict = {"keyval": None, "last": None, "previous_hook": None}


def _agreement_comm(comm):
    """A duplicate of ``comm`` for agreements only, cached on ``comm`` (collective).

    Votes travel apart from the caller's and our own data collectives, so an
    exception offered by the uncaught-exception hook can only meet a vote.
    """
    MPI = requires("mpi4py.MPI", "mpi", "method='mpi'")
    if _state["keyval"] is None:
        _state["keyval"] = MPI.Comm.Create_keyval(
            delete_fn=lambda _comm, _keyval, dup: dup.Free()
        )
    dup = comm.Get_attr(_state["keyval"])
    if dup is None:
        dup = comm.Dup()
        comm.Set_attr(_state["keyval"], dup)
    _state["last"] = dup
    if _state["previous_hook"] is None:
        _state["previous_hook"] = sys.excepthook
        sys.excepthook = _excepthook
    return dup


def _vote(dup, failed: bool, same: int = 0) -> tuple[bool, bool]:
    """(did any rank fail, do the ranks' ``same`` values differ)."""
    from mpi4py import MPI

    mine = np.array([int(failed), same, -same], dtype=np.int64)
    out = np.empty_like(mine)
    # Nonblocking, so that the exception hook's Iallreduce (which may give up)
    # matches it: blocking and nonblocking collectives never match each other.
    dup.Iallreduce(mine, out, op=MPI.MAX).Wait()
    return bool(out[0]), bool(out[1] != -out[2])


def _describe(exc: BaseException) -> dict:
    try:
        kind = pickle.dumps(type(exc))
    except Exception:  # a class defined in a function, say
        kind = None
    return {
        "type": kind,
        "name": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _rebuild(cls, message: str) -> Exception:
    """An exception of the failing rank's type, else a :class:`RankError`.

    ``cls`` is the class itself on the failing rank, pickled elsewhere.
    """
    try:
        if isinstance(cls, bytes):
            cls = pickle.loads(cls)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # not importable here, or needs other arguments
        pass
    return RankError(message)


def _shared_error(failures: list, size: int, mine: Exception | None) -> Exception:
    """The exception every rank raises: the lowest failing rank's, named.

    ``mine`` is this rank's own exception if it is that lowest failing rank.
    """
    rank, first = failures[0]
    message = f"rank {rank} of {size} failed: {first['message']}"
    if len(failures) > 1:
        message += f" (ranks {', '.join(str(r) for r, _ in failures)} failed)"
    exc = _rebuild(type(mine) if mine is not None else first["type"], message)
    if isinstance(exc, RankError):
        exc.args = (f"{message} [{first['name']}]",)
    setattr(exc, _SHARED, True)
    return exc


def _exchange(dup, error: BaseException | None) -> list:
    """Every rank's error description (after a vote found one): [(rank, dict)]."""
    mine = None if error is None else _describe(error)
    return [(r, d) for r, d in enumerate(dup.allgather(mine)) if d is not None]


def agree(comm, step: Callable[[], T], *, same: int = 0, what: str = "a value") -> T:
    """Run ``step()`` on this rank; if it raised on any rank, raise on every rank.

    Put it right before a collective that a failing rank would never reach.
    On success it costs one small nonblocking allreduce.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        Every rank of ``comm`` must call ``agree`` here.
    step : callable
        This rank's local work; it must not communicate.
    same : int, default=0
        A value every rank must have (say, the operand's columns).
    what : str
        What ``same`` is, for the error message.

    Returns
    -------
    object
        What ``step()`` returned.

    Raises
    ------
    Exception
        On every rank, when ``step`` raised on some: an exception of the lowest
        failing rank's type (a :class:`RankError` if it cannot be rebuilt)
        saying ``"rank r of K failed: <its message>"``. The failing rank chains
        its own exception; the others chain its traceback.
    ValueError
        On every rank, when ``same`` differs between ranks.
    """
    dup = _agreement_comm(comm)
    try:
        result, error = step(), None
    except Exception as exc:
        result, error = None, exc
    failed, differ = _vote(dup, error is not None, same)
    if failed:
        failures = _exchange(dup, error)
        mine = error if failures[0][0] == dup.Get_rank() else None
        shared = _shared_error(failures, dup.Get_size(), mine)
        cause = error or _RemoteTraceback(failures[0][1]["traceback"])
        raise shared from cause
    if differ:
        values = dup.allgather(same)
        raise ValueError(
            f"{what} differs between ranks (every rank must pass the same): "
            + ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        )
    return result


def _already_shared(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, _SHARED, False):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _offer(dup, exc: BaseException) -> bool:
    """Give ``exc`` to the ranks waiting in a vote; False if none came in time."""
    from mpi4py import MPI

    mine = np.array([1, 0, 0], dtype=np.int64)
    request = dup.Iallreduce(mine, np.empty_like(mine), op=MPI.MAX)
    deadline = time.monotonic() + RESCUE_SECONDS
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    _exchange(dup, exc)
    return True


def _excepthook(exc_type, exc, tb) -> None:
    """Share an exception that escaped this rank outside :func:`agree`."""
    from mpi4py import MPI

    previous = _state["previous_hook"] or sys.__excepthook__
    dup = _state["last"]
    if (
        dup is None
        or not isinstance(exc, Exception)
        or _already_shared(exc)
        or MPI.Is_finalized()
        or dup == MPI.COMM_NULL  # freed with the caller's communicator
        or dup.Get_size() < 2
    ):
        previous(exc_type, exc, tb)
        return
    joined = _offer(dup, exc)
    previous(exc_type, exc, tb)
    rank, size = dup.Get_rank(), dup.Get_size()
    if joined:
        print(
            f"budgeted.linalg: rank {rank} of {size} failed: {exc} "
            "(shared with every rank)",
            file=sys.stderr,
            flush=True,
        )
        return
    print(
        f"budgeted.linalg: rank {rank} of {size} failed: {exc}; no other rank "
        f"took the error within {RESCUE_SECONDS:g} s: aborting the job so that "
        "none waits forever",
        file=sys.stderr,
        flush=True,
    )
    dup.Abort(1)


def node_budget(comm, n_cpus: int | None = None) -> int:
    """This rank's share of its node's CPUs.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    n_cpus : int, optional
        CPUs of each node (default: the usable CPUs seen by the node's first
        rank, :func:`budgeted.usable_cpus`).

    Returns
    -------
    int
    """
    MPI = requires("mpi4py.MPI", "mpi", "method='mpi'")
    local = agree(
        comm, lambda: usable_cpus() if n_cpus is None else check_n_cpus(n_cpus)
    )
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        cpus = node.bcast(local, root=0)
        return split_budget(cpus, node.Get_size())[node.Get_rank()]
    finally:
        node.Free()


def mpi_datatype(dtype: np.dtype):
    """The predefined MPI datatype of a numpy dtype (reductions need one), or None."""
    from mpi4py import MPI

    dtype = np.dtype(dtype)
    if not dtype.isnative or dtype.hasobject:
        return None
    return MPI._typedict.get(dtype.char)


def gather_blocks(comm, local, counts, other: int, axis: int, root: int = 0):
    """Concatenate each rank's block along ``axis`` on ``root``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    local : numpy.ndarray or None
        This rank's 2-D block (None: no block; it has ``counts[rank] == 0``).
    counts : sequence of int
        Length of every rank's block along ``axis``, known to all ranks.
    other : int
        Length of the blocks along the other axis.
    axis : {0, 1}
        0 stacks rows, 1 columns.
    root : int

    Returns
    -------
    numpy.ndarray or None
        The whole array on ``root`` (dtype: the blocks' common dtype), None
        elsewhere.

    Raises
    ------
    ValueError
        On every rank, when a rank's block does not have the shape its count
        and ``other`` say (see :func:`agree`).
    """
    agree(comm, lambda: _check_block(local, counts[comm.Get_rank()], other, axis))
    return gather_rows(comm, local, counts, other, axis, root)


def _check_block(local, count: int, other: int, axis: int) -> None:
    """Refuse a block whose shape is not the one the gather expects."""
    want = (count, other) if axis == 0 else (other, count)
    if local is None and count == 0:
        return
    got = getattr(local, "shape", None)
    if tuple(got or ()) != want:
        raise ValueError(
            f"this rank's block has shape {got}, expected {want} "
            f"({count} {'rows' if axis == 0 else 'columns'} of length {other})"
        )


def gather_rows(comm, local, counts, other: int, axis: int, root: int):
    """:func:`gather_blocks` after the blocks were checked on every rank."""
    dtypes = comm.allgather(None if local is None else local.dtype.str)
    present = [np.dtype(d) for d in dtypes if d is not None]
    final = np.result_type(*present) if present else np.dtype(np.float64)
    datatype = mpi_datatype(final)
    if datatype is None or any(d != final for d in present):
        return _gather_pickles(comm, local, final, axis, root)
    if local is None:
        local = np.empty((0, other) if axis == 0 else (other, 0), dtype=final)
    # Each block travels as it is (C order, no transposition); the root then
    # places column blocks with one row-by-row copy.
    piece = np.ascontiguousarray(local, dtype=final)
    sizes = [int(c) * other for c in counts]
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    flat = np.empty(sum(sizes), dtype=final) if comm.Get_rank() == root else None
    comm.Gatherv(piece, [flat, sizes, displs, datatype], root=root)
    if flat is None:
        return None
    if axis == 0:
        return flat.reshape(sum(counts), other)
    return _place_columns(flat, counts, displs, other)


def _place_columns(flat: np.ndarray, counts, displs, rows: int) -> np.ndarray:
    whole = np.empty((rows, sum(counts)), dtype=flat.dtype)
    start = 0
    for count, displ in zip(counts, displs, strict=True):
        block = flat[displ : displ + count * rows].reshape(rows, count)
        whole[:, start : start + count] = block
        start += count
    return whole


def _gather_pickles(comm, local, final, axis: int, root: int):
    blocks = comm.gather(local, root=root)
    if blocks is None:
        return None
    return np.concatenate([b for b in blocks if b is not None], axis=axis).astype(
        final, copy=False
    )


class MPIEngine:
    """Column blocks over the ranks of an MPI communicator.

    Every rank passes the same operand; the root gets the result, the other
    ranks ``None``.

    Parameters
    ----------
    sides : OperatorSides
    comm : mpi4py.MPI.Comm, optional
        Default: ``COMM_WORLD``.
    n_cpus : int, optional
        CPUs of each node (see :func:`node_budget`).
    root : int, default=0
    """

    def __init__(self, sides: OperatorSides, comm=None, n_cpus=None, root=0):
        self.sides = sides
        self.comm = world() if comm is None else comm
        self.root = root
        self.rank = self.comm.Get_rank()
        self.gets_result = self.rank == root
        self.budget = node_budget(self.comm, n_cpus)

    def product(self, X: np.ndarray, adjoint: bool):
        """This rank's block; the whole ``L @ X`` on the root.

        A failure on any rank (an operand of the wrong shape, an exception in
        ``L``'s product) raises on every rank (see :func:`agree`).
        """
        size = self.comm.Get_size()
        blocks = column_blocks(X.shape[1], size)
        counts = [stop - start for start, stop in blocks]
        counts += [0] * (size - len(blocks))
        rows = self.sides.L.shape[1 if adjoint else 0]
        local = agree(
            self.comm,
            lambda: self._block(X, adjoint, blocks, rows),
            same=X.shape[1],
            what="the operand's number of columns",
        )
        return gather_rows(self.comm, local, counts, rows, axis=1, root=self.root)

    def _block(self, X: np.ndarray, adjoint: bool, blocks, rows: int):
        """This rank's block of the product, checked (None: it has no block)."""
        want = self.sides.L.shape[0 if adjoint else 1]
        if X.shape[0] != want:
            raise ValueError(
                f"operand has {X.shape[0]} rows, the operator"
                f"{'.H' if adjoint else ''} {want} columns"
            )
        if self.rank >= len(blocks):
            return None
        start, stop = blocks[self.rank]
        with budget_scope(self.budget, pinned_libraries()):
            local = self.sides.compute(X[:, start:stop], adjoint)
        _check_block(local, stop - start, rows, axis=1)
        return local

    def close(self) -> None:
        """Nothing to release (the communicator belongs to the caller)."""
