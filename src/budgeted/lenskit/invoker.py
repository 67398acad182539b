"""Invokers: apply ``func(model, *args)`` to many argument sets.

:func:`invoker` picks the implementation: :class:`InProcessOpInvoker` for one
process (lazy, in the caller), the multi-process invoker of
:mod:`budgeted.lenskit.processes` otherwise.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..budget import effective_n_jobs
from ..cpus import usable_cpus
from .config import child_threads_for, get_parallel_config
from .progress import InvokeProgress, invoke_progress

__all__ = ["InProcessOpInvoker", "ModelOpInvoker", "invoker"]


class ModelOpInvoker(ABC):
    """Applies a function to a model and each of many argument sets.

    Use it in a ``with`` block, or call :meth:`shutdown` when done.

    Parameters
    ----------
    model : object
        The model passed to every call.
    func : callable
        Called as ``func(model, *args)``.
    progress : InvokeProgress or bool, optional
        Counts finished items; ``True`` creates one (closed at shutdown).
    """

    def __init__(
        self, model: Any, func: Callable, progress: InvokeProgress | bool | None
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, got {func!r}")
        self.model = model
        self.func = func
        self._owns_progress = progress is True
        if progress is True:
            progress = invoke_progress(label=getattr(func, "__name__", None))
        if progress is not None and not isinstance(progress, InvokeProgress):
            raise TypeError(
                f"progress must be an InvokeProgress, True or None, got {progress!r}"
            )
        self.progress: InvokeProgress | None = progress or None

    def map(self, *iterables: Iterable) -> Iterator:
        """Yield ``func(model, *args)`` for each ``args`` of ``zip(*iterables)``.

        Results come in input order. The input is consumed as results are
        requested, a bounded number of items ahead. An exception raised by
        ``func`` is raised here, with its original type, when its item's
        result is reached.

        Parameters
        ----------
        *iterables : iterable
            One iterable per extra argument of ``func``.

        Returns
        -------
        iterator
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if self.progress is not None and self.progress.total is None:
            total = _common_length(iterables)
            if total is not None:
                self.progress.set_total(total)
        tasks = zip(*iterables, strict=False)  # stops at the shortest, like map
        return self._map(tasks, _common_length(iterables))

    @abstractmethod
    def _map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator: ...

    def shutdown(self) -> None:
        """Release everything (workers, shared memory, a progress bar made here)."""
        if self._owns_progress and self.progress is not None:
            self.progress.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()


class InProcessOpInvoker(ModelOpInvoker):
    """Runs every call in the calling process, when its result is requested."""

    def _map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator:
        for args in tasks:
            result = self.func(self.model, *args)
            if self.progress is not None:
                self.progress.update(1)
            yield result


def invoker(
    model: Any,
    func: Callable,
    n_jobs: int | None = None,
    progress: InvokeProgress | bool | None = None,
    *,
    chunksize: int | None = None,
) -> ModelOpInvoker:
    """Make an invoker applying ``func(model, *args)`` to many argument sets.

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
    progress : InvokeProgress or bool, optional
        Counts finished items (:func:`invoke_progress`); ``True`` makes one.
    chunksize : int, optional
        Items sent to a worker at once (default: about 8 chunks per worker
        when the input's length is known, at most 64 items; 1 otherwise).

    Returns
    -------
    ModelOpInvoker
        Use it in a ``with`` block.

    Examples
    --------
    >>> import numpy as np
    >>> with invoker(np.eye(2), np.dot, n_jobs=1) as inv:
    ...     [r.tolist() for r in inv.map([np.ones(2)])]
    [[1.0, 1.0]]
    """
    if chunksize is not None:
        chunksize = _check_chunksize(chunksize)
    config = get_parallel_config()
    n_jobs = config.processes if n_jobs is None else n_jobs
    n_jobs = effective_n_jobs(n_jobs, usable_cpus())
    if n_jobs == 1:
        return InProcessOpInvoker(model, func, progress)
    from .processes import ProcessPoolOpInvoker

    return ProcessPoolOpInvoker(
        model,
        func,
        progress,
        n_jobs=n_jobs,
        child_threads=child_threads_for(n_jobs),
        chunksize=chunksize,
    )


def _check_chunksize(chunksize: object) -> int:
    if isinstance(chunksize, bool) or not isinstance(chunksize, numbers.Integral):
        raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
    return int(chunksize)


def _common_length(iterables: tuple[Iterable, ...]) -> int | None:
    """The number of argument sets ``zip`` yields, when every input has a length."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None
