"""The invoker factory: :func:`invoker` checks its arguments and picks one.

:class:`~budgeted.lenskit.opinvoker.InProcessOpInvoker` for one process (lazy,
in the caller), :class:`~budgeted.lenskit.poolinvoker.ProcessPoolOpInvoker`
otherwise, whose workers (:mod:`budgeted.lenskit.processes`, imported when
first used) share one copy of the model. The classes are re-exported here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from ..budget import check_positive_int, effective_n_jobs
from ..cpus import usable_cpus
from .config import child_threads_for, get_parallel_config
from .knobs import ArgumentTypeError, ParallelConfig, config_from_object
from .opinvoker import InProcessOpInvoker, ModelOpInvoker, ProgressLike
from .poolinvoker import ProcessPoolOpInvoker

__all__ = ["InProcessOpInvoker", "ModelOpInvoker", "ProcessPoolOpInvoker", "invoker"]


def invoker(
    model: Any,
    func: Callable,
    n_jobs: int | None = None,
    progress: ProgressLike | bool | None = None,
    *,
    worker_parallel: ParallelConfig | None = None,
    chunksize: int | None = None,
) -> ModelOpInvoker:
    """Make an invoker applying ``func(model, *args)`` to many argument sets.

    LensKit's signature: ``n_jobs`` and ``progress`` may be positional,
    ``worker_parallel`` (LensKit 2025.1) and ``chunksize`` (budgeted's) are
    keyword-only.

    Parameters
    ----------
    model : object
        The model. With several processes it is pickled **once** (protocol 5)
        into shared memory; each worker loads it once, its numpy arrays (and
        CPU torch tensors) as read-only views of that memory.
    func : callable
        Called as ``func(model, *args)``; pickled with cloudpickle.
    n_jobs : int, optional
        Processes: ``None`` uses the configured ``processes``
        (:func:`get_parallel_config`); ``1`` runs in the calling process;
        ``-1`` one per usable CPU (joblib's meaning). Each worker's native
        pools get ``child_threads`` threads (recomputed for ``n_jobs`` when
        it differs from the configured processes and ``child_threads`` was
        not given: see :func:`~budgeted.lenskit.config.child_threads_for`).
    progress : InvokeProgress, progress-like, or bool, optional
        Counts finished items (:func:`invoke_progress`); ``True`` makes one.
    worker_parallel : ParallelConfig, optional
        The configuration of each worker process (its
        :func:`get_parallel_config`); its ``backend_threads`` is the worker's
        thread budget. Default: ``ParallelConfig(1, 1, child_threads, 1)``,
        as in LensKit. Ignored with one process, as in LensKit.
    chunksize : int, optional
        Items sent to a worker at once (default: about 8 chunks per worker
        when the input's length is known, at most 64 items; 1 otherwise).

    Returns
    -------
    ModelOpInvoker
        Use it in a ``with`` block.

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0 (LensKit's message first: ``max_workers must be
        greater than 0``) or ``chunksize`` is not a positive integer.
    ArgumentTypeError
        (a :class:`TypeError` and a :class:`ValueError`) If ``n_jobs`` is
        not an integer, None or ``"ray"``.
    RuntimeError
        If ``n_jobs`` is ``"ray"``: LensKit's message, ``ray backend not
        available``; budgeted has no Ray invoker.

    Examples
    --------
    >>> import numpy as np
    >>> with invoker(np.eye(2), np.dot, n_jobs=1) as inv:
    ...     [r.tolist() for r in inv.map([np.ones(2)])]
    [[1.0, 1.0]]
    """
    if chunksize is not None:
        chunksize = check_positive_int("chunksize", chunksize)
    config = get_parallel_config()
    n_jobs = config.processes if n_jobs is None else _check_n_jobs(n_jobs)
    n_jobs = effective_n_jobs(n_jobs, usable_cpus())
    if n_jobs == 1:
        return InProcessOpInvoker(model, func, progress)
    if worker_parallel is None:
        worker_parallel = ParallelConfig(1, 1, child_threads_for(n_jobs), 1)
    return ProcessPoolOpInvoker(
        model,
        func,
        progress,
        n_jobs=n_jobs,
        worker_config=config_from_object(worker_parallel),
        chunksize=chunksize,
    )


def _check_n_jobs(n_jobs: object) -> int:
    """``n_jobs`` if it is an integer other than 0; raise as LensKit does."""
    if n_jobs == "ray":
        raise RuntimeError(
            "ray backend not available: budgeted.lenskit has no Ray invoker; "
            "use an integer n_jobs"
        )
    if isinstance(n_jobs, bool):
        raise ArgumentTypeError(f"n_jobs must be an integer or None, got {n_jobs!r}")
    if not isinstance(n_jobs, numbers.Integral):
        raise ArgumentTypeError(
            f"{_lenskit_type_error(n_jobs)}; n_jobs must be an integer or None, "
            f"got {n_jobs!r}"
        )
    if n_jobs == 0:
        raise ValueError(
            "max_workers must be greater than 0: n_jobs=0 runs nothing; use "
            "None (the configured processes), a positive integer, or -1 for "
            "all CPUs (-2 all but one...)"
        )
    return int(n_jobs)


def _lenskit_type_error(n_jobs: object) -> str:
    """The words of the TypeError that LensKit's process pool raises."""
    if isinstance(n_jobs, float):
        return "'float' object cannot be interpreted as an integer"
    kind = type(n_jobs).__name__
    return f"'<=' not supported between instances of '{kind}' and 'int'"
