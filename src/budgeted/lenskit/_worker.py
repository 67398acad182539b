"""Worker-process side of a multi-process invoker: load once, call per chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import apply_config, replace_config
from .knobs import ParallelConfig
from .logs import LogSetup, install_worker_handler
from .sharing import SharedHandle, load_shared

__all__ = ["ChunkFailure", "call_chunk", "start"]


@dataclass
class _Loaded:
    model: Any
    func: Any
    segment: Any  # SharedMemory: keeps the model's buffers mapped


_loaded: _Loaded | None = None


class ChunkFailure(Exception):
    """``func`` raised on an item: carries the chunk's results before it.

    Attributes
    ----------
    results : list
        Results of the items before the failing one.
    error : Exception
        What ``func`` raised.
    """

    def __init__(self, results: list, error: Exception) -> None:
        super().__init__(results, error)
        self.results = results
        self.error = error


def start(handle: SharedHandle, logs: LogSetup, config: tuple[int, ...]) -> None:
    """Initializer: forward logs, load the shared model, configure threads.

    ``config`` is the worker's :class:`ParallelConfig` as a tuple, by default
    ``(1, 1, child_threads, 1)``: one process and one thread for caller-level
    work (nested invokers run in the worker itself). The pool has already
    applied its ``backend_threads`` to the native pools.
    """
    global _loaded
    install_worker_handler(logs)
    (model, func), segment = load_shared(handle)
    worker_config = ParallelConfig(*config)
    replace_config(worker_config)
    # libraries the model just imported (torch)
    apply_config(worker_config.backend_threads, worker_config.threads)
    _loaded = _Loaded(model, func, segment)


def call_chunk(chunk: list[tuple]) -> list:
    """Apply ``func(model, *args)`` to each argument tuple of ``chunk``."""
    if _loaded is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("worker used before its initializer loaded a model")
    model, func = _loaded.model, _loaded.func
    results = []
    for args in chunk:
        try:
            results.append(func(model, *args))
        except Exception as exc:
            raise ChunkFailure(results, exc) from exc
    return results
