"""The operator ``P`` that :func:`~budgeted.linalg.pmatmat` returns.

``P`` is a thin shell over an *engine* (threads, processes or MPI) whose
``product(X, adjoint)`` computes ``L @ X`` or ``L.H @ X`` for a 2-D ``X``.
A lazylinop ``LazyLinOp`` gives a ``LazyLinOp`` (``.H``, ``.T``, composition
and ``toarray()`` keep working); anything else a scipy ``LinearOperator``.
On MPI ranks other than the root, products return ``None``.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Protocol

import numpy as np

__all__ = ["Engine", "dense_operand", "is_lazylinop", "requires", "wrap"]


def requires(module: str, extra: str, what: str = "budgeted.linalg"):
    """Import an optional dependency, or raise an ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f'{what} needs {module.split(".")[0]}: pip install "budgeted[{extra}]"'
        ) from exc


def is_lazylinop(L) -> bool:
    """True for a lazylinop ``LazyLinOp`` (without importing lazylinop)."""
    module = sys.modules.get("lazylinop")
    return module is not None and isinstance(L, module.LazyLinOp)


class Engine(Protocol):
    """What computes the products of ``P``: threads, processes or MPI ranks."""

    #: False on MPI ranks other than the root, whose products return None.
    gets_result: bool

    def product(self, X: np.ndarray, adjoint: bool) -> np.ndarray | None:
        """``L @ X``, or ``L.H @ X`` when ``adjoint``, for a 2-D ``X``."""

    def close(self) -> None:
        """Release workers and shared memory."""


def dense_operand(X) -> np.ndarray:
    """``X`` as an ndarray; a sparse operand is refused rather than densified."""
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(X):
        raise TypeError(
            f"pmatmat products need a dense operand, got {type(X).__name__}: "
            "pass X.toarray(), or fold X into the operator (pmatmat(L @ X))"
        )
    return np.asarray(X)


def _vector_fn(engine, adjoint: bool):
    def apply(x):
        y = engine.product(dense_operand(x).reshape(-1, 1), adjoint)
        return None if y is None else y.reshape(-1)

    return apply


def _matrix_fn(engine, adjoint: bool):
    def apply(X):
        return engine.product(dense_operand(X), adjoint)

    return apply


class _Closing:
    """``close()`` and the context manager protocol, shared by both shells."""

    engine: Engine

    def close(self) -> None:
        """Release the workers and shared memory now (idempotent)."""
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@functools.cache
def _lazylinop_class():
    from lazylinop import LazyLinOp

    class ParallelLazyLinOp(_Closing, LazyLinOp):
        """A ``LazyLinOp`` whose products run in parallel (see ``pmatmat``)."""

        def __init__(self, shape, engine) -> None:
            super().__init__(
                shape,
                matvec=_vector_fn(engine, False),
                matmat=_matrix_fn(engine, False),
                rmatvec=_vector_fn(engine, True),
                rmatmat=_matrix_fn(engine, True),
            )
            self.engine = engine

    return ParallelLazyLinOp


@functools.cache
def _linear_operator_class():
    linalg = requires("scipy.sparse.linalg", "linalg", "pmatmat of a non-LazyLinOp")

    class ParallelLinearOperator(_Closing, linalg.LinearOperator):
        """A scipy ``LinearOperator`` whose products run in parallel."""

        def __init__(self, shape, dtype, engine, adjoint: bool = False) -> None:
            super().__init__(np.dtype(dtype), shape)
            self.engine = engine
            self._is_adjoint = adjoint

        def _matmat(self, X):
            return _matrix_fn(self.engine, self._is_adjoint)(X)

        def _rmatmat(self, X):
            return _matrix_fn(self.engine, not self._is_adjoint)(X)

        def _matvec(self, x):
            return _vector_fn(self.engine, self._is_adjoint)(x)

        def _rmatvec(self, x):
            return _vector_fn(self.engine, not self._is_adjoint)(x)

        def _adjoint(self):
            shape = (self.shape[1], self.shape[0])
            return type(self)(shape, self.dtype, self.engine, not self._is_adjoint)

        def matvec(self, x):
            if self.engine.gets_result:
                return super().matvec(x)
            return self._matvec(x)  # a non-root MPI rank: takes part, gets None

        def rmatvec(self, x):
            if self.engine.gets_result:
                return super().rmatvec(x)
            return self._rmatvec(x)

    return ParallelLinearOperator


def wrap(L, engine):
    """The parallel operator over ``L`` computed by ``engine``."""
    shape = (int(L.shape[0]), int(L.shape[1]))
    if is_lazylinop(L):
        return _lazylinop_class()(shape, engine)
    dtype = getattr(L, "dtype", None)
    return _linear_operator_class()(
        shape, np.float64 if dtype is None else dtype, engine
    )
