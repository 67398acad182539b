"""budgeted: a joblib parallel backend that never oversubscribes the CPU.

Importing the package registers two joblib backends and does nothing else
(budgeted changes no environment variable and patches nothing; joblib and
threadpoolctl, which it imports, set ``KMP_INIT_AT_FORK`` and
``KMP_DUPLICATE_LIB_OK`` as they always do)::

    import budgeted
    from joblib import Parallel, delayed, parallel_config

    with parallel_config("budgeted", n_jobs=4):
        Parallel()(delayed(f)(x) for x in xs)

* ``"budgeted"``: :class:`BudgetedBackend`, processes or threads on this machine;
* ``"budgeted-dask"``: :mod:`budgeted.distributed`, each task on a Dask cluster
  under its host's budget (Dask is imported only when it is used).

Optional layers, imported on demand: :mod:`budgeted.lenskit` (LensKit-style
configuration and model invokers) and :mod:`budgeted.linalg` (``pmatmat``,
``MPILop``).
"""

from .apply import hold_cpus
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
    "hold_cpus",
    "register",
    "split_budget",
    "usable_cpus",
]
__version__ = "0.1.0"

register()
