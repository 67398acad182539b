"""The multi-process invoker: a budgeted pool sharing one serialized model.

::

    parent                                    worker (x n_jobs, budgeted pool)
    ──────                                    ────────────────────────────────
    SharedModel((model, func))  ── name ──>   _worker.start: logs to parent,
    LogForwarder                ── address ─>   load model zero-copy, once
    map(): chunks, a window of                native pools: child_threads
      2 x n_jobs chunks in flight ─────────>  _worker.call_chunk(chunk)
      results yielded in order  <─────────      [func(model, *args), ...]
      progress counts finished items
    shutdown(): pool, then logs drained, then segment unlinked
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from itertools import islice
from typing import Any

from . import _worker
from .config import ParallelConfig
from .invoker import ModelOpInvoker, ProgressLike
from .logs import LogForwarder
from .sharing import SharedModel

__all__ = ["ProcessPoolOpInvoker"]

_log = logging.getLogger(__name__)

#: Chunks in flight per worker: enough to keep every worker busy.
CHUNKS_PER_WORKER_IN_FLIGHT = 2
#: Default chunking for inputs of known length: chunks per worker, largest chunk.
CHUNKS_PER_WORKER, MAX_AUTO_CHUNKSIZE = 8, 64


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
        super().__init__(model, func, progress)
        self.n_jobs = n_jobs
        self.chunksize = chunksize
        resources = contextlib.ExitStack()
        with resources:
            resources.callback(super().shutdown)  # a progress bar made here
            self._shared = SharedModel((model, func))
            resources.callback(self._shared.close)
            self._logs = LogForwarder()
            resources.callback(self._logs.close)
            self._pool = _start_pool(n_jobs, worker_config, self._shared, self._logs)
            resources.pop_all()  # started: released by shutdown from now on
        _log.debug(
            "model shared: %d bytes in %s",
            self._shared.handle.nbytes,
            self._shared.handle.name,
        )
        self._finalizer = weakref.finalize(
            self, _release, self._pool, self._logs, self._shared
        )

    def _map(self, tasks: Iterator[tuple], n_tasks: int | None) -> Iterator:
        size = self._chunk_size(n_tasks)
        window: deque[Future] = deque()
        limit = CHUNKS_PER_WORKER_IN_FLIGHT * self.n_jobs
        try:
            while True:
                while len(window) < limit:
                    chunk = list(islice(tasks, size))
                    if not chunk:
                        break
                    window.append(self._submit(chunk))
                if not window:
                    return
                yield from _results(window.popleft())
        finally:
            for future in window:
                future.cancel()

    def _submit(self, chunk: list[tuple]) -> Future:
        if not self._finalizer.alive:
            raise RuntimeError(
                "this invoker is shut down: consume map()'s results before "
                "shutdown() (the end of the invoker's with block)"
            )
        future = self._pool.submit(_worker.call_chunk, chunk)
        if self.progress is not None:
            future.add_done_callback(_count_done(self._finished, len(chunk)))
        return future

    def _chunk_size(self, n_tasks: int | None) -> int:
        if self.chunksize is not None:
            return self.chunksize
        if n_tasks is None:
            return 1
        per_chunk = math.ceil(n_tasks / (CHUNKS_PER_WORKER * self.n_jobs))
        return max(1, min(per_chunk, MAX_AUTO_CHUNKSIZE))

    def shutdown(self) -> None:
        """Stop the workers, drain their logs, unlink the shared memory."""
        self._finalizer()
        super().shutdown()


def _start_pool(n_jobs: int, config: ParallelConfig, shared, logs: LogForwarder):
    from ..pool import budgeted_executor

    return budgeted_executor(
        n_jobs,
        threads_per_worker=config.backend_threads,
        initializer=_worker.start,
        initargs=(shared.handle, logs.setup, tuple(config)),
    )


def _results(future: Future) -> list:
    """A chunk's results; on failure, those before it, then the original error."""
    try:
        return future.result()
    except _worker.ChunkFailure as failure:
        return _partial(failure)


def _partial(failure: _worker.ChunkFailure):
    yield from failure.results
    raise failure.error from failure.__cause__


def _count_done(finished: Callable[[int], None], n_items: int):
    def callback(future: Future) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            finished(n_items)
        elif isinstance(error, _worker.ChunkFailure):
            finished(len(error.results))

    return callback


def _release(pool, logs: LogForwarder, shared: SharedModel) -> None:
    """Workers first (they map the segment and send logs), then the rest."""
    try:
        pool.shutdown(wait=True)
    finally:
        logs.close()
        shared.close()
