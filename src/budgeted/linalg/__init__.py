"""Parallel linear operators on thread budgets: ``pmatmat`` and ``MPILop``.

``pmatmat(L, method)`` computes ``L @ A`` over column blocks of ``A`` with
budgeted threads, worker processes that keep ``L``, or MPI ranks; ``MPILop``
distributes a matrix stored in an ``.npz`` file by row blocks over MPI ranks.
Unlike lazylinop's ``wip.parallel``, no thread variable has to be set by hand.

Modules: :mod:`.blocks` (pure block arithmetic and assembly), :mod:`.engines`
(operator sides, threads), :mod:`.process` and :mod:`.shm` (worker processes,
memory-mapped operands), :mod:`.mpi` (MPI engine, gathering), :mod:`.agreement`
(errors agreed across ranks), :mod:`.mpilop`,
:mod:`.operators` (the returned ``LazyLinOp``/``LinearOperator`` shells).
scipy, lazylinop and mpi4py are imported only when needed.
"""

from __future__ import annotations

from .blocks import column_blocks
from .pmatmat import METHODS, pmatmat

__all__ = ["METHODS", "MPILop", "column_blocks", "pmatmat"]


def __getattr__(name: str):
    if name == "MPILop":  # needs lazylinop and mpi4py: import on first use
        from .mpilop import MPILop

        return MPILop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
