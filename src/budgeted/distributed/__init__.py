"""Thread budgets on a Dask distributed cluster: the ``"budgeted-dask"`` backend.

Each task runs under the budget of the *host* it lands on: that host's usable
CPUs split over all Dask worker threads on the host::

    client (configure)                   worker thread on host H (each batch)
    ──────────────────                   ─────────────────────────────────────
    scheduler_info()["workers"]          seat = plan.seats[worker address]
      -> seats: per worker, the host's   shares = split_budget(cpus of H,
         thread count and the index of            threads on H)
         its first thread on the host    slot = lowest free slot of the worker
    submit(DaskBatch) ───────────────>   budget = shares[seat.first + slot]
                                         OpenMP (this thread): budget
                                         BLAS (process-wide): smallest budget
                                           running in this process
                                         run the tasks

In a worker *process* (not the client's), the process's ``os.environ`` also
holds the smallest budget running in it while batches run (restored after),
so a library first loaded by a task loads within budget.

joblib's ``DaskDistributedBackend`` does the rest: large arguments are
scattered once, results come back in order, exceptions are re-raised with
their type. On top of it, aborting a call cancels the submitted futures, and
a cluster with a single worker thread still runs the tasks on the cluster.

:func:`budget_workers` adds the budgets to the environment of the worker
processes *before they start* (a nanny plugin), for libraries loaded before
the first batch. The client's ``os.environ`` is never modified by budgeted
(Dask's own nannies do write ``OMP_NUM_THREADS=1`` and the like into the
environment of the process that starts them, e.g. a ``LocalCluster``'s).

Modules, one job each: :mod:`.seats` (pure planning: where each worker sits
among its host's threads, and its shares), :mod:`.scheduler` (the
scheduler's list of workers), :mod:`.environ` (what a worker's environment
says: its host's CPUs, the user's pins), :mod:`.worker` (a batch run under
its thread's budget), :mod:`.backend` (the client-side joblib backend) and
:mod:`.plugin` (the nanny plugin and :func:`budget_workers`).
"""

from __future__ import annotations

try:
    import distributed  # noqa: F401  (checked before the modules that use it)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        'The "budgeted-dask" backend needs Dask distributed: '
        'pip install "budgeted[dask]"'
    ) from exc

from .backend import BudgetedDaskBackend
from .plugin import WorkerEnvPlugin, budget_workers
from .seats import Seat, plan_seats
from .worker import BACKEND_NAME

__all__ = [
    "BACKEND_NAME",
    "BudgetedDaskBackend",
    "Seat",
    "WorkerEnvPlugin",
    "budget_workers",
    "plan_seats",
]
