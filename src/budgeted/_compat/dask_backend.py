"""joblib's Dask backend, its private parts under public names (imports Dask).

Imported only by :mod:`budgeted.distributed.backend`, which needs Dask anyway.
"""

from __future__ import annotations

from joblib._dask import DaskDistributedBackend

__all__ = ["DaskBackendBase"]


class DaskBackendBase(DaskDistributedBackend):
    """joblib's ``DaskDistributedBackend`` with two public hooks.

    joblib builds what it submits for a batch in ``_to_func_args`` (large
    arguments scattered once) and keeps the submitted futures in ``_results``
    and ``_callbacks`` until they are collected. Subclasses replace the
    submitted callable with :meth:`make_batch` and drop what is pending with
    :meth:`drop_pending_futures`.
    """

    def make_batch(self, batch, tasks: list):
        """The callable submitted for one batch, called as ``batch(tasks=tasks)``.

        Parameters
        ----------
        batch : callable
            joblib's: runs ``func(*args, **kwargs)`` for each task.
        tasks : list of tuple
            ``(func, args, kwargs)`` of each task, large arguments as futures.
        """
        return batch

    async def _to_func_args(self, func):
        batch, tasks = await super()._to_func_args(func)
        return self.make_batch(batch, tasks), tasks

    def drop_pending_futures(self) -> list:
        """Stop tracking the submitted futures not collected yet; return them."""
        futures = list(self._results.copy())
        self._results.clear()
        self._callbacks.clear()
        return futures
