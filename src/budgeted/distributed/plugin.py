"""Budgets in the workers' environment before they start: a nanny plugin.

:func:`budget_workers` registers :class:`WorkerEnvPlugin`; each nanny writes
its worker's smallest share into the worker process's environment and
restarts it, for libraries loaded before the first batch.
"""

from __future__ import annotations

import os
import time

import distributed

from ..budget import check_n_cpus
from ..threadenv import INJECTED_VARS_MARKER, budget_env, idle_env
from .environ import host_cpus, user_pins
from .scheduler import scheduler_workers
from .seats import plan_seats

__all__ = ["PLUGIN_NAME", "WorkerEnvPlugin", "budget_workers"]

PLUGIN_NAME = "budgeted-env"


class WorkerEnvPlugin(distributed.diagnostics.plugin.NannyPlugin):
    """Write each worker's budget into its environment before it starts.

    Registered on a running cluster (see :func:`budget_workers`), every nanny
    seats its worker among the workers of its host (from the scheduler), sets
    :func:`~budgeted.threadenv.budget_env` of the worker's *smallest* share in
    the environment of the worker process, and restarts it. Nannies that join
    later do the same when they start. Only worker processes are affected:
    neither the nanny's nor the client's ``os.environ`` changes.

    Parameters
    ----------
    n_cpus : int, optional
        CPUs per host to plan for. Default: measured by each nanny.
    """

    restart = True
    idempotent = False
    name = PLUGIN_NAME

    def __init__(self, n_cpus: int | None = None) -> None:
        self.n_cpus = None if n_cpus is None else check_n_cpus(n_cpus)

    async def setup(self, nanny) -> None:
        """Compute this nanny's worker budget and put it in ``nanny.env``."""
        try:
            info = await nanny.scheduler.identity(n_workers=-1)
        except TypeError:  # distributed < 2025.4: every worker by default
            info = await nanny.scheduler.identity()
        workers = {address: w for address, w in info["workers"].items() if w["nanny"]}
        own = next((a for a, w in workers.items() if w["nanny"] == nanny.address), None)
        if own is None:  # a nanny joining: its worker is not registered yet
            own = f"~{nanny.address}"
            workers[own] = {"host": nanny.ip, "nthreads": nanny.nthreads}
        environ = {**os.environ, **nanny.env}  # what the worker process gets
        seat = plan_seats(workers)[own]
        budget = seat.smallest_share(host_cpus(self.n_cpus, environ))
        pins = user_pins(environ)
        nanny.env.update({**budget_env(budget, pins), **idle_env(pins, environ)})


def budget_workers(
    client, n_cpus: int | None = None, timeout: float = 60.0
) -> dict[str, int | None]:
    """Give every nanny-started worker its budget in its environment.

    Registers :class:`WorkerEnvPlugin`, which **restarts** the workers (data
    held by them is lost): call it right after creating the client. Workers
    without a nanny keep their environment; their tasks still run under their
    budget through threadpoolctl.

    Parameters
    ----------
    client : distributed.Client
    n_cpus : int, optional
        CPUs per host to plan for. Default: measured on each host.
    timeout : float, default=60
        Seconds to wait for the restarted workers.

    Returns
    -------
    dict of str to int or None
        Worker address to the budget its environment now holds
        (``OMP_NUM_THREADS`` as written by budgeted), ``None`` where none.

    Raises
    ------
    TimeoutError
        If fewer workers than before are running after ``timeout`` seconds.
    """
    n_workers = len(scheduler_workers(client))
    client.register_plugin(WorkerEnvPlugin(n_cpus), name=PLUGIN_NAME)
    _wait_running(client, n_workers, timeout)
    return client.run(_env_budget)


def _wait_running(client, n_workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        workers = scheduler_workers(client).values()
        running = sum(w.get("status") == "running" for w in workers)
        if running >= n_workers:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"budget_workers: {running} of {n_workers} workers running "
                f"{timeout} s after their restart"
            )
        time.sleep(0.05)


def _env_budget() -> int | None:
    """The budget budgeted wrote into this process's environment, if any."""
    if INJECTED_VARS_MARKER not in os.environ:
        return None
    return int(os.environ["LOKY_MAX_CPU_COUNT"])
