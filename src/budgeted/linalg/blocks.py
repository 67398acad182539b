"""Pure pieces of a parallel product: column blocks, block products, assembly.

``L @ A`` is computed by column blocks of ``A``: worker ``i`` computes
``L @ A[:, start_i:stop_i]`` and writes it into the same columns of the
result. Nothing here starts a thread or a process.
"""

from __future__ import annotations

import itertools
import numbers

import numpy as np

from ..budget import check_positive_int, split_budget

__all__ = ["Output", "adjoint_of", "block_product", "column_blocks", "guess_dtype"]


def column_blocks(n_columns: int, nworkers: int) -> list[tuple[int, int]]:
    """Split ``n_columns`` columns into contiguous ``(start, stop)`` blocks.

    Unlike :func:`budgeted.split_budget`, which never gives a worker less
    than one CPU, a worker may get no column: blocks are never empty, so there
    are ``min(n_columns, nworkers)`` of them, the first ones one column longer.

    Parameters
    ----------
    n_columns : int
        Columns of the operand (>= 0).
    nworkers : int
        Workers (>= 1).

    Returns
    -------
    list of (int, int)

    Examples
    --------
    >>> column_blocks(7, 3)
    [(0, 3), (3, 5), (5, 7)]
    >>> column_blocks(2, 4)
    [(0, 1), (1, 2)]
    """
    nworkers = check_positive_int("nworkers", nworkers)
    if isinstance(n_columns, bool) or not isinstance(n_columns, numbers.Integral):
        raise ValueError(f"n_columns must be an integer, got {n_columns!r}")
    if n_columns < 0:
        raise ValueError(f"n_columns must be >= 0, got {n_columns}")
    if n_columns == 0:
        return []
    # With no more blocks than columns, split_budget's floor of 1 never applies.
    sizes = split_budget(int(n_columns), min(int(n_columns), nworkers))
    stops = list(itertools.accumulate(sizes))
    return list(zip([0, *stops[:-1]], stops, strict=True))


def adjoint_of(L):
    """The adjoint of an operator: ``.H`` when it has one, else ``conj().T``.

    Real ndarrays give a transposed view (no copy).
    """
    if isinstance(L, np.ndarray):
        return L.T if not np.iscomplexobj(L) else L.conj().T
    if hasattr(L, "H") and not hasattr(L, "tocsr"):  # LazyLinOp, LinearOperator
        return L.H
    return L.conj().T  # scipy sparse matrices and arrays


def block_product(L, block: np.ndarray, use_matvec: bool) -> np.ndarray:
    """``L @ block`` at once, or column by column when ``use_matvec``."""
    if not use_matvec:
        return np.asarray(L @ block)
    columns = [np.asarray(L @ block[:, j]).reshape(-1) for j in range(block.shape[1])]
    return np.stack(columns, axis=1)


def guess_dtype(L, operand_dtype: np.dtype, learned: dict) -> np.dtype:
    """The dtype ``L @ A`` most likely has: learned before, or from ``L.dtype``.

    Parameters
    ----------
    L : operator
    operand_dtype : numpy.dtype
        dtype of ``A``.
    learned : dict
        ``{operand dtype: result dtype}`` seen in earlier products.
    """
    if operand_dtype in learned:
        return learned[operand_dtype]
    op_dtype = getattr(L, "dtype", None)
    if op_dtype is None:
        return np.dtype(operand_dtype)
    return np.result_type(op_dtype, operand_dtype)


class Output:
    """The result of a product, assembled from column blocks.

    Blocks whose dtype is the guessed one are written in place; the others are
    kept aside, and :meth:`result` then builds the array with the dtype the
    blocks really have (``L @ A`` never changes dtype because of us).

    Parameters
    ----------
    array : numpy.ndarray
        ``(rows, columns)`` result, of the guessed dtype.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self._written = False
        self._odd: dict[tuple[int, int], np.ndarray] = {}

    def put(self, start: int, stop: int, block: np.ndarray) -> bool:
        """Write one block; False if its dtype differs (it is kept aside)."""
        if block.dtype != self.array.dtype:
            self.keep(start, stop, block)
            return False
        self.array[:, start:stop] = block
        self._written = True
        return True

    def mark_written(self) -> None:
        """Note that a worker wrote a block of the guessed dtype in place."""
        self._written = True

    def keep(self, start: int, stop: int, block: np.ndarray) -> None:
        """Keep a block of another dtype, returned by a worker."""
        self._odd[(start, stop)] = block

    def result(self) -> np.ndarray:
        """The assembled result: a new array only if some block had another dtype."""
        if not self._odd:
            return self.array
        dtypes = [b.dtype for b in self._odd.values()]
        if self._written:
            dtypes.append(self.array.dtype)
        final = np.result_type(*dtypes)
        out = np.empty(self.array.shape, dtype=final)
        if self._written:
            out[...] = self.array
        for (start, stop), block in self._odd.items():
            out[:, start:stop] = block
        return out
