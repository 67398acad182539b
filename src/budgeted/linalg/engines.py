"""Engines shared by every method: the operator's two sides, and threads.

An engine's ``product(X, adjoint)`` returns ``L @ X`` (or ``L.H @ X``) for a
2-D ``X``. :class:`ThreadEngine` runs one column block per thread with the
budgeted backend's thread mode: each thread's OpenMP pools get its share of
the CPUs, process-wide BLAS pools the smallest share running.
"""

from __future__ import annotations

import functools

import numpy as np

from .blocks import Output, adjoint_of, block_product, column_blocks, guess_dtype

__all__ = ["OperatorSides", "ThreadEngine"]


class OperatorSides:
    """``L`` and its adjoint (built on first use), with learned result dtypes.

    Parameters
    ----------
    L : operator
    use_matvec : bool
        Compute blocks column by column with ``L``'s matvec.
    """

    def __init__(self, L, use_matvec: bool = False) -> None:
        self.L = L
        self.use_matvec = bool(use_matvec)
        self._adjoint = None
        self._learned: tuple[dict, dict] = ({}, {})

    def side(self, adjoint: bool):
        """``L``, or its adjoint."""
        if not adjoint:
            return self.L
        if self._adjoint is None:
            self._adjoint = adjoint_of(self.L)
        return self._adjoint

    def output(self, X: np.ndarray, adjoint: bool) -> Output:
        """An empty result for ``side(adjoint) @ X``, of the likeliest dtype."""
        rows = self.L.shape[1] if adjoint else self.L.shape[0]
        dtype = guess_dtype(self.L, X.dtype, self._learned[adjoint])  # L.H: same
        return Output(np.empty((rows, X.shape[1]), dtype=dtype))

    def learn(self, X: np.ndarray, adjoint: bool, result: np.ndarray) -> np.ndarray:
        """Remember the dtype of this product's result; return the result."""
        self._learned[adjoint][X.dtype] = result.dtype
        return result

    def compute(self, X: np.ndarray, adjoint: bool) -> np.ndarray:
        """``side(adjoint) @ X`` in the calling thread."""
        return block_product(self.side(adjoint), X, self.use_matvec)


class ThreadEngine:
    """Column blocks on budgeted threads of the calling process.

    Parameters
    ----------
    sides : OperatorSides
    nworkers : int
        Most threads to use (fewer when ``X`` has fewer columns).
    n_cpus : int, optional
        CPUs to share (default: the budget in force at each product).
    """

    gets_result = True

    def __init__(self, sides: OperatorSides, nworkers: int, n_cpus=None) -> None:
        self.sides = sides
        self.nworkers = nworkers
        self.n_cpus = n_cpus

    def product(self, X: np.ndarray, adjoint: bool) -> np.ndarray:
        """``L @ X`` (or ``L.H @ X``) by column blocks, one per thread."""
        from ..threads import run_on_threads

        out = self.sides.output(X, adjoint)
        # The backend's thread mode applies each thread's share (a single
        # block runs in the calling thread, with every CPU).
        run_on_threads(
            [
                functools.partial(self._fill, X, adjoint, out, start, stop)
                for start, stop in column_blocks(X.shape[1], self.nworkers)
            ],
            n_cpus=self.n_cpus,
        )
        return self.sides.learn(X, adjoint, out.result())

    def _fill(self, X, adjoint: bool, out: Output, start: int, stop: int) -> None:
        out.put(start, stop, self.sides.compute(X[:, start:stop], adjoint))

    def close(self) -> None:
        """Nothing to release: threads live for one product."""
