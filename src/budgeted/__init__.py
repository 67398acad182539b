"""budgeted: a joblib parallel backend that never oversubscribes the CPU.

Importing the package registers the joblib backend ``"budgeted"``; it does
nothing else (no environment change, no patching)::

    import budgeted
    from joblib import Parallel, delayed, parallel_config

    with parallel_config("budgeted", n_jobs=4):
        Parallel()(delayed(f)(x) for x in xs)

It also registers ``"budgeted-dask"`` (:mod:`budgeted.distributed`: each task on
a Dask cluster under its host's budget) without importing Dask.
"""

from .backend import BudgetedBackend
from .budget import split_budget
from .cpus import cpu_limits, usable_cpus
from .pool import BudgetedExecutor, budgeted_executor
from .registration import register
from .threadenv import current_budget

__all__ = [
    "BudgetedBackend",
    "BudgetedExecutor",
    "budgeted_executor",
    "cpu_limits",
    "current_budget",
    "register",
    "split_budget",
    "usable_cpus",
]
__version__ = "0.1.0"

register()
