"""MPI pieces: node budgets, gathering blocks on the root, the MPI engine.

Run under ``mpiexec -n K python script.py``. Each rank computes one column
block (rank ``r`` gets block ``r`` of ``column_blocks(columns, K)``) under its
share of its node's CPUs, ``split_budget(cpus of the node, ranks on the
node)[rank on the node]``, and the root rank gathers the blocks with
``Gatherv`` in the blocks' own MPI datatype (float32 stays float32; complex
works). Blocks whose dtypes differ, or have no MPI datatype, are gathered as
pickles instead.

Every step that can fail on some ranks only runs in
:func:`budgeted.linalg.agreement.agree` (re-exported here with
:class:`~budgeted.linalg.agreement.RankError` and ``RESCUE_SECONDS``), so that
an error on one rank is an error on every rank.
"""

from __future__ import annotations

import numpy as np

from ..budget import check_n_cpus, split_budget
from ..cpus import usable_cpus
from ..threadenv import budget_scope, pinned_libraries
from .agreement import RESCUE_SECONDS, RankError, agree
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


def world():
    """``mpi4py.MPI.COMM_WORLD`` (imported here, with a clear error if absent)."""
    return requires("mpi4py.MPI", "mpi", "method='mpi'").COMM_WORLD


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
