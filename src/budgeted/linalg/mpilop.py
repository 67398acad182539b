"""``MPILop``: a matrix in an ``.npz`` file, distributed by row blocks over MPI.

Only the root rank reads the file; it scatters row block ``r`` of
``column_blocks(rows, K)`` to rank ``r`` (ranks beyond the rows get none).
Then, on ``K`` ranks::

    M @ X    X broadcast (bcast_op) -> rank r: M_r @ X (its rows) -> Gatherv rows
    M.H @ Y  Y broadcast (bcast_op) -> rank r: M_r.H @ Y_r      -> Reduce (sum)

Each rank computes under its share of its node's CPUs. The root gets the
result, the other ranks ``None``.
"""

from __future__ import annotations

import numpy as np

from ..threadenv import budget_scope, pinned_libraries
from .blocks import adjoint_of, column_blocks
from .mpi import _mpi_datatype, gather_blocks, node_budget, world
from .operators import requires

_lazylinop = requires("lazylinop", "linalg", "MPILop")

__all__ = ["MPILop"]


def _column(x) -> np.ndarray:
    return np.asarray(x).reshape(-1, 1)


def _ravel(y):
    return None if y is None else y.reshape(-1)


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
        self.mat_dtype = np.dtype(mat_dtype)
        shape = (int(shape[0]), int(shape[1]))
        rows = column_blocks(shape[0], self.mpi_size)
        self.row_counts = [b - a for a, b in rows] + [0] * (self.mpi_size - len(rows))
        self.rows = self._scatter(mat_npz, shape)
        self._rows_h = None
        self.budget = node_budget(self.comm, n_cpus)
        super().__init__(
            shape,
            matvec=lambda x: _ravel(self._product(_column(x), adjoint=False)),
            matmat=lambda X: self._product(X, adjoint=False),
            rmatvec=lambda y: _ravel(self._product(_column(y), adjoint=True)),
            rmatmat=lambda Y: self._product(Y, adjoint=True),
        )

    def _scatter(self, mat_npz, shape) -> np.ndarray:
        M = None
        if self.mpi_rank == 0:
            with np.load(mat_npz, allow_pickle=False) as npz:
                M = np.ascontiguousarray(npz[npz.files[0]], dtype=self.mat_dtype)
            if M.shape != shape:
                raise ValueError(f"shape {shape} does not match {mat_npz}: {M.shape}")
        local = np.empty((self.row_counts[self.mpi_rank], shape[1]), self.mat_dtype)
        sizes = [c * shape[1] for c in self.row_counts]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        datatype = _mpi_datatype(self.mat_dtype)
        self.comm.Scatterv([M, sizes, displs, datatype], local, root=0)
        return local

    def _operand(self, X):
        if not self.bcast_op:
            return np.asarray(X)
        meta = None if self.mpi_rank else (np.shape(X), np.asarray(X).dtype.str)
        shape, dtype = self.comm.bcast(meta, root=0)
        X = np.ascontiguousarray(X) if self.mpi_rank == 0 else np.empty(shape, dtype)
        self.comm.Bcast([X, _mpi_datatype(X.dtype)], root=0)
        return X

    def _product(self, X, adjoint: bool):
        X = self._operand(X)
        start = sum(self.row_counts[: self.mpi_rank])
        stop = start + self.row_counts[self.mpi_rank]
        with budget_scope(self.budget, pinned_libraries()):
            if not adjoint:
                local = self.rows @ X if stop > start else None
                return gather_blocks(
                    self.comm, local, self.row_counts, X.shape[1], axis=0
                )
            return self._reduce(self._rows_adjoint() @ X[start:stop])

    def _rows_adjoint(self) -> np.ndarray:
        if self._rows_h is None:
            self._rows_h = adjoint_of(self.rows)
        return self._rows_h

    def _reduce(self, part: np.ndarray):
        from mpi4py import MPI

        dtypes = self.comm.allgather(part.dtype.str)
        final = np.result_type(*dtypes)
        part = np.ascontiguousarray(part, dtype=final)
        datatype = _mpi_datatype(final)
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
