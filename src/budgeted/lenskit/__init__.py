"""LensKit-style parallelism on thread budgets (``lenskit.parallel``'s API).

Four knobs set once per process (:func:`initialize`, ``LK_NUM_*``
variables), model-op invokers that share one copy of a model with their
worker processes (:func:`invoker`), progress (:func:`invoke_progress`), log
records forwarded from workers to this process's loggers, and
:class:`WorkChunks`. The worker pools are :func:`budgeted.pool.budgeted_executor`
pools: every worker's native thread pools stay within its budget.

Importing this package needs neither tqdm nor torch; both are used when
installed (``pip install "budgeted[lenskit]"``, ``"budgeted[torch]"``).
"""

from __future__ import annotations

from .chunks import WorkChunks
from .config import (
    ParallelConfig,
    ensure_parallel_init,
    get_parallel_config,
    initialize,
)
from .invoker import InProcessOpInvoker, ModelOpInvoker, invoker
from .progress import InvokeProgress, invoke_progress

__all__ = [
    "InProcessOpInvoker",
    "InvokeProgress",
    "ModelOpInvoker",
    "ParallelConfig",
    "WorkChunks",
    "ensure_parallel_init",
    "get_parallel_config",
    "initialize",
    "invoke_progress",
    "invoker",
]
