"""The invokers' base class and the in-process invoker.

:class:`ModelOpInvoker` applies ``func(model, *args)`` to many argument sets
(LensKit's ``ModelOpInvoker[A, R]``) and counts finished items on a progress
object; :class:`InProcessOpInvoker` runs every call in the calling process.
The process-pool invoker is :mod:`budgeted.lenskit.poolinvoker`; which one to
use is decided by :func:`budgeted.lenskit.invoker.invoker`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from .progress import invoke_progress

__all__ = ["InProcessOpInvoker", "ModelOpInvoker", "ProgressLike"]

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


def _common_length(iterables: tuple[Iterable, ...]) -> int | None:
    """The number of argument sets ``zip`` yields, when every input has a length."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None
