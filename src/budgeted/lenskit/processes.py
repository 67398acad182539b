"""Worker processes sharing one serialized model: the multi-process invoker's pool.

:class:`SharedModelPool` is what
:class:`~budgeted.lenskit.poolinvoker.ProcessPoolOpInvoker`
runs on (this module knows nothing of invokers)::

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
from .knobs import ParallelConfig
from .logs import LogForwarder
from .sharing import SharedModel

__all__ = ["SharedModelPool"]

_log = logging.getLogger(__name__)

#: Chunks in flight per worker: enough to keep every worker busy.
CHUNKS_PER_WORKER_IN_FLIGHT = 2
#: Default chunking for inputs of known length: chunks per worker, largest chunk.
CHUNKS_PER_WORKER, MAX_AUTO_CHUNKSIZE = 8, 64


class SharedModelPool:
    """Worker processes that share one copy of ``(model, func)``.

    Parameters
    ----------
    model : object
        Passed to every call.
    func : callable
        Called as ``func(model, *args)`` in the workers.
    n_jobs : int
        Worker processes (>= 2).
    worker_config : ParallelConfig
        Each worker's configuration; its ``backend_threads`` is the thread
        budget of the worker's native pools.
    chunksize : int, optional
        Items per task sent to a worker (default: see :meth:`chunk_size`).
    """

    def __init__(
        self,
        model: Any,
        func: Callable,
        *,
        n_jobs: int,
        worker_config: ParallelConfig,
        chunksize: int | None = None,
    ) -> None:
        self.n_jobs = n_jobs
        self.chunksize = chunksize
        resources = contextlib.ExitStack()
        with resources:
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

    def map(
        self,
        tasks: Iterator[tuple],
        n_tasks: int | None,
        finished: Callable[[int], None] | None = None,
    ) -> Iterator:
        """Yield ``func(model, *args)`` for each ``args`` of ``tasks``, in order.

        A bounded window of chunks is in flight; an exception raised by
        ``func`` is raised when its item's result is reached, after the
        results before it. ``finished(n)`` is told when ``n`` more items are
        finished.
        """
        size = self.chunk_size(n_tasks)
        window: deque[Future] = deque()
        limit = CHUNKS_PER_WORKER_IN_FLIGHT * self.n_jobs
        try:
            while True:
                while len(window) < limit:
                    chunk = list(islice(tasks, size))
                    if not chunk:
                        break
                    window.append(self._submit(chunk, finished))
                if not window:
                    return
                yield from _results(window.popleft())
        finally:
            for future in window:
                future.cancel()

    def _submit(self, chunk: list[tuple], finished) -> Future:
        if not self._finalizer.alive:
            raise RuntimeError(
                "this invoker is shut down: consume map()'s results before "
                "shutdown() (the end of the invoker's with block)"
            )
        future = self._pool.submit(_worker.call_chunk, chunk)
        if finished is not None:
            future.add_done_callback(_count_done(finished, len(chunk)))
        return future

    def chunk_size(self, n_tasks: int | None) -> int:
        """Items per chunk: ``chunksize``, else about 8 chunks per worker."""
        if self.chunksize is not None:
            return self.chunksize
        if n_tasks is None:
            return 1
        per_chunk = math.ceil(n_tasks / (CHUNKS_PER_WORKER * self.n_jobs))
        return max(1, min(per_chunk, MAX_AUTO_CHUNKSIZE))

    def shutdown(self) -> None:
        """Stop the workers, drain their logs, unlink the shared memory."""
        self._finalizer()


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
