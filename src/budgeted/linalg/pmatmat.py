"""``pmatmat``: ``L @ A`` in parallel over column blocks of ``A``, on budgets."""

from __future__ import annotations

from ..budget import check_n_cpus, check_positive_int
from ..threadenv import current_budget
from .engines import OperatorSides, ThreadEngine
from .operators import wrap

__all__ = ["METHODS", "pmatmat"]

#: The parallel methods :func:`pmatmat` knows.
METHODS = ("thread", "process", "mpi")
_OPTIONS = {"thread": {"n_cpus"}, "process": {"n_cpus", "context"}}
_OPTIONS["mpi"] = {"n_cpus", "comm", "root"}


def pmatmat(
    L,
    method: str = "thread",
    nworkers: int | None = None,
    use_matvec: bool = False,
    **kwargs,
):
    """An operator ``P`` with ``P @ A == L @ A``, computed in parallel.

    The columns of ``A`` are split into contiguous blocks, one per worker (the
    first workers get one more column when they do not divide evenly; workers
    beyond the number of columns get none), and each worker computes
    ``L @ block`` under its thread budget: its share of the CPUs, applied to
    OpenMP, BLAS and the other native pools. Nothing needs setting by hand
    (no ``OMP_NUM_THREADS=1``): ``nworkers`` workers share the CPUs and
    never oversubscribe them. ``P.H @ B`` is parallel too.

    Parameters
    ----------
    L : LazyLinOp, numpy.ndarray, scipy sparse matrix or array, or LinearOperator
        The operator. A lazylinop ``LazyLinOp`` gives a ``LazyLinOp`` (``.H``,
        ``.T``, composition and ``toarray()`` work); anything else gives a
        scipy ``LinearOperator``.
    method : {"thread", "process", "mpi"}, default="thread"
        ``"thread"``: budgeted threads of this process (the backend's thread
        mode). ``"process"``: worker processes started once
        (:func:`budgeted.pool.budgeted_executor`, never ``fork``) that receive
        ``L`` once and keep it while ``P`` lives; operands and results travel
        through memory-mapped files, not pickles. ``"mpi"``: the ranks of an
        ``mpiexec`` run; every rank passes the same ``A``, the root gets the
        result and the other ranks ``None``.
    nworkers : int, optional
        Workers (threads or processes); ignored by ``"mpi"`` (the ranks).
        Default: the budget in force (:func:`budgeted.current_budget`, i.e.
        the usable CPUs outside a task). May exceed the columns of ``A``.
    use_matvec : bool, default=False
        Compute each block column by column with ``L @ vector``.
    **kwargs
        ``n_cpus`` (all methods): CPUs to share (per node for ``"mpi"``).
        ``context`` (``"process"``): ``"loky"`` (default), ``"spawn"`` or
        ``"forkserver"``. ``comm``, ``root`` (``"mpi"``): communicator
        (default ``COMM_WORLD``) and root rank (default 0).

    Returns
    -------
    LazyLinOp or scipy.sparse.linalg.LinearOperator
        It has ``close()`` and is a context manager: for ``"process"`` that
        stops the workers (garbage collection does it too). Products accept
        dense operands (an ndarray, 1-D or 2-D).

    Examples
    --------
    >>> import numpy as np
    >>> M = np.arange(12.0).reshape(3, 4)
    >>> P = pmatmat(M, nworkers=2)
    >>> np.allclose(P @ np.eye(4), M)
    True
    """
    method = _check_method(method)
    unknown = set(kwargs) - _OPTIONS[method]
    if unknown:
        raise TypeError(
            f"pmatmat(method={method!r}) got unknown options {sorted(unknown)}"
        )
    _check_operator(L)
    n_cpus = kwargs.pop("n_cpus", None)
    n_cpus = None if n_cpus is None else check_n_cpus(n_cpus)
    sides = OperatorSides(L, use_matvec=use_matvec)
    if method == "mpi":
        from .mpi import MPIEngine

        return wrap(L, MPIEngine(sides, n_cpus=n_cpus, **kwargs))
    nworkers = _check_nworkers(nworkers, n_cpus)
    if method == "thread":
        return wrap(L, ThreadEngine(sides, nworkers, n_cpus))
    from .process import ProcessEngine

    return wrap(L, ProcessEngine(sides, nworkers, n_cpus, **kwargs))


def _check_method(method) -> str:
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method.lower()


def _check_nworkers(nworkers, n_cpus) -> int:
    if nworkers is None:
        return current_budget() if n_cpus is None else n_cpus
    return check_positive_int("nworkers", nworkers)


def _check_operator(L) -> None:
    shape = getattr(L, "shape", None)
    if shape is None or len(shape) != 2 or not hasattr(L, "__matmul__"):
        raise TypeError(
            "L must be a 2-D operator (LazyLinOp, ndarray, scipy sparse matrix "
            f"or LinearOperator), got {type(L).__name__}"
        )
