"""``MPILop``: a matrix in an ``.npz`` file, distributed by row blocks over MPI.

Only the root rank reads the file; it scatters row block ``r`` of
``column_blocks(rows, K)`` to rank ``r`` (ranks beyond the rows get none).
Then, on ``K`` ranks::

    M @ X    X broadcast (bcast_op) -> rank r: M_r @ X (its rows) -> Gatherv rows
    M.H @ Y  Y broadcast (bcast_op) -> rank r: M_r.H @ Y_r      -> Reduce (sum)

Each rank computes under its share of its node's CPUs. The root gets the
result, the other ranks ``None``.

Every step that can fail on some ranks only (reading the file on the root,
checking the operand, each rank's product) runs in :func:`.agreement.agree` before
the next collective: an error on one rank raises on every rank, never hangs.
"""

from __future__ import annotations

import numpy as np

from ..threadenv import budget_scope, pinned_libraries
from .agreement import agree
from .blocks import adjoint_of, column_blocks
from .mpi import gather_rows, mpi_datatype, node_budget, world
from .operators import requires

_lazylinop = requires("lazylinop", "linalg", "MPILop")

__all__ = ["MPILop"]


def _column(x) -> np.ndarray:
    return np.asarray(x).reshape(-1, 1)


def _ravel(y):
    return None if y is None else y.reshape(-1)


def _shape(shape) -> tuple[int, int]:
    """``shape`` as two non-negative ints, or a ValueError naming it."""
    try:
        rows, columns = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be two integers, got {shape!r}") from None
    if rows < 0 or columns < 0:
        raise ValueError(f"shape must not be negative, got {shape!r}")
    return rows, columns


class MPILop(_lazylinop.LazyLinOp):
    """A ``LazyLinOp`` over a matrix stored in an ``.npz`` file, on MPI ranks.

    Parameters
    ----------
    shape : tuple of int
        Shape of the matrix (other ranks do not read the file).
    mat_npz : str or path-like
        ``.npz`` file holding the matrix as its first array (read on the root).
    mat_dtype : dtype
        dtype of the matrix.
    bcast_op : bool, default=True
        The root broadcasts the operand of each product; False: every rank
        passes the operand itself.
    comm : mpi4py.MPI.Comm, optional
        Default: ``COMM_WORLD``.
    n_cpus : int, optional
        CPUs of each node, split over its ranks (default: usable CPUs).

    Raises
    ------
    ValueError, TypeError, OSError
        On every rank, naming the failing rank (``"rank 0 of 2 failed: ..."``),
        when the file cannot be read, does not hold a matrix of ``shape`` or of
        a dtype castable to ``mat_dtype``, or when ``mat_dtype`` has no MPI
        datatype; products likewise, for an operand of the wrong shape.

    Examples
    --------
    Under ``mpiexec -n 2 python script.py``::

        op = MPILop((60, 50), "M.npz", np.float64)
        y = op @ x          # the root gets M @ x, other ranks None
        z = op.H @ y        # M.H @ y, on the root
    """

    def __init__(
        self, shape, mat_npz, mat_dtype, bcast_op=True, *, comm=None, n_cpus=None
    ):
        self.comm = world() if comm is None else comm
        self.mpi_rank, self.mpi_size = self.comm.Get_rank(), self.comm.Get_size()
        self.bcast_op = bool(bcast_op)
        shape, self.mat_dtype, M = agree(
            self.comm, lambda: self._read(shape, mat_npz, mat_dtype)
        )
        rows = column_blocks(shape[0], self.mpi_size)
        self.row_counts = [b - a for a, b in rows] + [0] * (self.mpi_size - len(rows))
        self.rows = self._scatter(M, shape)
        self._rows_h = None
        self.budget = node_budget(self.comm, n_cpus)
        super().__init__(
            shape,
            matvec=lambda x: _ravel(self._product(_column(x), adjoint=False)),
            matmat=lambda X: self._product(X, adjoint=False),
            rmatvec=lambda y: _ravel(self._product(_column(y), adjoint=True)),
            rmatmat=lambda Y: self._product(Y, adjoint=True),
        )

    def _read(self, shape, mat_npz, mat_dtype):
        """Checked ``(shape, dtype, matrix)``; the matrix is read on the root only."""
        shape = _shape(shape)
        dtype = np.dtype(mat_dtype)
        if mpi_datatype(dtype) is None:
            raise TypeError(f"mat_dtype {dtype} has no MPI datatype")
        if self.mpi_rank != 0:
            return shape, dtype, None
        with np.load(mat_npz, allow_pickle=False) as npz:
            if not npz.files:
                raise ValueError(f"{mat_npz} holds no array")
            M = npz[npz.files[0]]
        if M.shape != shape:
            raise ValueError(f"shape {shape} does not match {mat_npz}: {M.shape}")
        if not np.can_cast(M.dtype, dtype, casting="same_kind"):
            raise TypeError(f"{mat_npz} holds {M.dtype}, not readable as {dtype}")
        return shape, dtype, np.ascontiguousarray(M, dtype=dtype)

    def _scatter(self, M, shape) -> np.ndarray:
        local = np.empty((self.row_counts[self.mpi_rank], shape[1]), self.mat_dtype)
        sizes = [c * shape[1] for c in self.row_counts]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        datatype = mpi_datatype(self.mat_dtype)
        self.comm.Scatterv([M, sizes, displs, datatype], local, root=0)
        return local

    def _check_operand(self, X, adjoint: bool) -> np.ndarray:
        """``X`` as a 2-D array of the rows the product needs."""
        X = np.asarray(X)
        want = self.shape[0 if adjoint else 1]
        if X.ndim != 2 or X.shape[0] != want:
            raise ValueError(
                f"operand of shape {X.shape} for MPILop{'.H' if adjoint else ''} "
                f"of shape {self.shape}: expected {want} rows"
            )
        if self.bcast_op and mpi_datatype(X.dtype) is None:
            raise TypeError(
                f"operand dtype {X.dtype} has no MPI datatype to broadcast "
                "(bcast_op=False passes every rank's own operand)"
            )
        return X

    def _operand(self, X, adjoint: bool):
        if not self.bcast_op:
            return X  # checked with the product, in the same agreement
        X = agree(
            self.comm,
            lambda: self._check_operand(X, adjoint) if self.mpi_rank == 0 else None,
        )
        meta = None if self.mpi_rank else (X.shape, X.dtype.str)
        shape, dtype = self.comm.bcast(meta, root=0)
        X = np.ascontiguousarray(X) if self.mpi_rank == 0 else np.empty(shape, dtype)
        self.comm.Bcast([X, mpi_datatype(X.dtype)], root=0)
        return X

    def _product(self, X, adjoint: bool):
        X = self._operand(X, adjoint)
        part = agree(
            self.comm,
            lambda: self._local(X, adjoint),
            same=0 if self.bcast_op else np.shape(X)[-1],
            what="the operand's number of columns",
        )
        if adjoint:
            return self._reduce(part)
        columns = np.shape(X)[-1]
        return gather_rows(self.comm, part, self.row_counts, columns, axis=0, root=0)

    def _local(self, X, adjoint: bool):
        """This rank's part: its rows' product (None: no rows), or adjoint's."""
        if not self.bcast_op:
            X = self._check_operand(X, adjoint)
        start = sum(self.row_counts[: self.mpi_rank])
        stop = start + self.row_counts[self.mpi_rank]
        with budget_scope(self.budget, pinned_libraries()):
            if adjoint:
                return self._rows_adjoint() @ X[start:stop]
            return self.rows @ X if stop > start else None

    def _rows_adjoint(self) -> np.ndarray:
        if self._rows_h is None:
            self._rows_h = adjoint_of(self.rows)
        return self._rows_h

    def _reduce(self, part: np.ndarray):
        from mpi4py import MPI

        dtypes = self.comm.allgather(part.dtype.str)
        final = np.result_type(*dtypes)
        part = np.ascontiguousarray(part, dtype=final)
        datatype = mpi_datatype(final)
        if datatype is None:
            return self.comm.reduce(part, op=MPI.SUM, root=0)
        total = np.empty_like(part) if self.mpi_rank == 0 else None
        self.comm.Reduce(
            [part, datatype],
            [total, datatype] if total is not None else None,
            op=MPI.SUM,
            root=0,
        )
        return total
