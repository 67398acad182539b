"""The process-pool invoker: calls run in workers sharing one copy of the model.

The workers, the shared model and the forwarding of their logs are
:class:`budgeted.lenskit.processes.SharedModelPool`, imported when the first
pool starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .knobs import ParallelConfig
from .opinvoker import ModelOpInvoker, ProgressLike

__all__ = ["ProcessPoolOpInvoker"]


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
