"""Invokers: apply ``func(model, *args)`` to many argument sets.

:func:`invoker` picks the implementation: :class:`InProcessOpInvoker` for one
process (lazy, in the caller), :class:`ProcessPoolOpInvoker` otherwise, whose
workers (:mod:`budgeted.lenskit.processes`, imported when first used) share
one copy of the model.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from ..budget import effective_n_jobs
from ..cpus import usable_cpus
from .config import (
    ArgumentTypeError,
    ParallelConfig,
    child_threads_for,
    config_from_object,
    get_parallel_config,
)
from .progress import invoke_progress

__all__ = ["InProcessOpInvoker", "ModelOpInvoker", "ProcessPoolOpInvoker", "invoker"]

A = TypeVar("A")
R = TypeVar("R")


class ProgressLike(Protocol):
    """What an invoker needs of a progress object (progress_api's ``update``)."""

    def update(
        self, n: int = 1, state: str | None = None, src_state: str | None = None
    ) -> None: ...


class ModelOpInvoker(ABC, Generic[A, R]):
    """Applies a function to a model and each of many argument sets.

    Use it in a ``with`` block (its exit calls :meth:`shutdown`), or call
    :meth:`shutdown` when done. Generic in the argument and result types, as
    LensKit's (``ModelOpInvoker[A, R]``). A subclass written for LensKit,
    which defines ``map(tasks)`` and its own ``__init__``, works as well.

    Parameters
    ----------
    model : object
        The model passed to every call.
    func : callable
        Called as ``func(model, *args)``.
    progress : InvokeProgress, progress-like, or bool, optional
        Counts finished items; ``True`` creates one (closed at shutdown). Any
        object with progress_api's ``update(n, state, src_state)`` works: it
        is told ``update(n, "finished")``.
    """

    progress: Any = None
    _owns_progress = False

    def __init__(
        self, model: Any, func: Callable, progress: ProgressLike | bool | None
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, got {func!r}")
        self.model = model
        self.func = func
        self._owns_progress = progress is True
        if progress is True:
            progress = invoke_progress(label=getattr(func, "__name__", None))
        if progress is not None and not callable(getattr(progress, "update", None)):
            raise TypeError(
                "progress must be an InvokeProgress (or an object with an update "
                f"method, such as a progress_api Progress), True or None, "
                f"got {progress!r}"
            )
        self.progress = progress or None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Let a LensKit-style subclass (it defines ``map``) be instantiated."""
        super().__init_subclass__(**kwargs)
        if "map" in vars(cls) and "_map" not in vars(cls):
            cls._map = _unused_map  # type: ignore[method-assign]

    def map(self, tasks: Iterable[A], *iterables: Iterable) -> Iterator[R]:
        """Yield ``func(model, task)`` for each task, in input order.

        With more iterables, ``func(model, *args)`` for each ``args`` of
        ``zip(tasks, *iterables)`` (like :func:`map`). The input is consumed
        as results are requested, a bounded number of items ahead. An
        exception raised by ``func`` is raised here, with its original type,
        when its item's result is reached.

        Parameters
        ----------
        tasks : iterable
            The argument of each call (LensKit's parameter).
        *iterables : iterable
            More arguments for each call, one iterable per argument.

        Returns
        -------
        iterator
        """
        iterables = (tasks, *iterables)
        total = _common_length(iterables)
        self._set_total(total)
        tasks_args = zip(*iterables, strict=False)  # stops at the shortest, like map
        return self._map(tasks_args, total)

    @abstractmethod
    def _map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator: ...

    def _set_total(self, total: int | None) -> None:
        """Give the progress object the input's length, unless it has a total."""
        progress = self.progress
        if total is None or getattr(progress, "total", 0) is not None:
            return
        if callable(getattr(progress, "set_total", None)):
            progress.set_total(total)

    def _finished(self, n: int) -> None:
        """Tell the progress object that ``n`` more items are finished."""
        if self.progress is not None:
            self.progress.update(n, "finished")

    def shutdown(self) -> None:
        """Release everything (workers, shared memory, a progress bar made here)."""
        if self._owns_progress and self.progress is not None:
            self.progress.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()


def _unused_map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator:
    raise NotImplementedError("a subclass that overrides map() does not use _map()")


class InProcessOpInvoker(ModelOpInvoker):
    """Runs every call in the calling process, when its result is requested."""

    def _map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator:
        for args in tasks:
            result = self.func(self.model, *args)
            self._finished(1)
            yield result


class ProcessPoolOpInvoker(ModelOpInvoker):
    """Runs calls in worker processes that share one copy of the model.

    Parameters
    ----------
    model, func, progress
        See :class:`ModelOpInvoker`.
    n_jobs : int
        Worker processes (>= 2).
    worker_config : ParallelConfig
        Each worker's configuration; its ``backend_threads`` is the thread
        budget of the worker's native pools.
    chunksize : int, optional
        Items per task sent to a worker (see :func:`invoker`).
    """

    def __init__(
        self,
        model: Any,
        func: Callable,
        progress: ProgressLike | bool | None,
        *,
        n_jobs: int,
        worker_config: ParallelConfig,
        chunksize: int | None = None,
    ) -> None:
        from .processes import SharedModelPool

        super().__init__(model, func, progress)
        self.n_jobs = n_jobs
        self.chunksize = chunksize
        try:
            self._pool = SharedModelPool(
                model,
                func,
                n_jobs=n_jobs,
                worker_config=worker_config,
                chunksize=chunksize,
            )
        except BaseException:
            super().shutdown()  # a progress bar made here
            raise

    def _map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator:
        finished = None if self.progress is None else self._finished
        return self._pool.map(tasks, n_tasks, finished)

    def shutdown(self) -> None:
        """Stop the workers, drain their logs, unlink the shared memory."""
        self._pool.shutdown()
        super().shutdown()


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
        chunksize = _check_chunksize(chunksize)
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
