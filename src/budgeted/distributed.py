"""Thread budgets on a Dask distributed cluster: the ``"budgeted-dask"`` backend.

Each task runs under the budget of the *host* it lands on: that host's usable
CPUs split over all Dask worker threads on the host::

    client (configure)                   worker thread on host H (each batch)
    ──────────────────                   ─────────────────────────────────────
    scheduler_info()["workers"]          seat = plan.seats[worker address]
      -> seats: per worker, the host's   shares = split_budget(cpus of H,
         thread count and the index of            threads on H)
         its first thread on the host    slot = lowest free slot of the worker
    submit(_BudgetedBatch) ──────────>   budget = shares[seat.first + slot]
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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

try:
    import distributed
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        'The "budgeted-dask" backend needs Dask distributed: '
        'pip install "budgeted[dask]"'
    ) from exc

from joblib import parallel_config

from . import _compat, sharedpools
from ._compat.dask_backend import DaskBackendBase
from .budget import check_n_cpus, effective_n_jobs, split_budget
from .cpus import usable_cpus
from .threadenv import (
    INJECTED_VARS_MARKER,
    budget_env,
    budget_scope,
    pinned_libraries,
)

__all__ = [
    "BACKEND_NAME",
    "BudgetedDaskBackend",
    "Seat",
    "WorkerEnvPlugin",
    "budget_workers",
    "plan_seats",
]

#: The name ``budgeted.registration`` registers this backend under (the same
#: literal there: registration imports this module lazily, never the reverse).
BACKEND_NAME = "budgeted-dask"
PLUGIN_NAME = "budgeted-env"

_NO_CLIENT = (
    'The "budgeted-dask" joblib backend needs a Dask Client: create one first,\n\n'
    "    from dask.distributed import Client, LocalCluster\n"
    "    client = Client(LocalCluster())            # on this machine, or\n"
    '    client = Client("tcp://scheduler:8786")    # an existing scheduler\n\n'
    'then use parallel_config("budgeted-dask") (or pass client=client).'
)


# -- planning: pure functions of the scheduler's worker list -------------------
@dataclass(frozen=True)
class Seat:
    """Where a Dask worker's threads sit among the threads of its host.

    Attributes
    ----------
    host_threads : int
        Threads of all Dask workers on the host.
    first : int
        Index of this worker's first thread among them.
    nthreads : int
        Threads of this worker.
    """

    host_threads: int
    first: int
    nthreads: int

    def shares(self, host_cpus: int) -> tuple[int, ...]:
        """This worker's budgets, one per thread slot, largest first."""
        budgets = split_budget(host_cpus, self.host_threads)
        return budgets[self.first : self.first + self.nthreads]


def plan_seats(workers: Mapping[str, Mapping]) -> dict[str, Seat]:
    """Seat every worker among the threads of its host.

    Parameters
    ----------
    workers : mapping
        ``client.scheduler_info()["workers"]``: worker address to a mapping
        with at least ``"host"`` and ``"nthreads"``.

    Returns
    -------
    dict of str to Seat
        Workers of one host are seated in address order, so the host's
        budgets (``split_budget(host_cpus, host_threads)``) go to distinct
        threads and add up to the host's CPUs.

    Examples
    --------
    >>> seats = plan_seats({"a": {"host": "h", "nthreads": 2},
    ...                     "b": {"host": "h", "nthreads": 1}})
    >>> seats["b"], seats["a"].shares(8), seats["b"].shares(8)
    (Seat(host_threads=3, first=2, nthreads=1), (3, 3), (2,))
    """
    by_host: dict[str, list[str]] = {}
    for address in sorted(workers):
        by_host.setdefault(workers[address]["host"], []).append(address)
    seats = {}
    for addresses in by_host.values():
        total = sum(max(1, int(workers[a]["nthreads"])) for a in addresses)
        first = 0
        for address in addresses:
            nthreads = max(1, int(workers[address]["nthreads"]))
            seats[address] = Seat(total, first, nthreads)
            first += nthreads
    return seats


@dataclass(frozen=True)
class _Plan:
    """What every batch of one call carries to the workers."""

    seats: Mapping[str, Seat]
    n_cpus: int | None = None
    fixed: int | None = None
    client: tuple[str, int] = field(default_factory=lambda: _here())

    def seat(self, address: str) -> Seat:
        seat = self.seats.get(address)
        return seat if seat is not None else _seat_from_scheduler(address)


def _here() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _seat_from_scheduler(address: str) -> Seat:
    """Seat of a worker that joined after the call was planned."""
    client = distributed.get_client()
    return plan_seats(_workers(client))[address]


def _workers(client) -> dict[str, Mapping]:
    """Every worker of the cluster, as ``scheduler_info()["workers"]``.

    ``n_workers=-1`` is needed where ``scheduler_info()`` lists only five
    workers by default (distributed 2025.4 to 2026.6); older releases did not
    know the argument and list them all.
    """
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:
        return client.scheduler_info()["workers"]


# -- what a worker's environment says -------------------------------------------
def _user_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables budgeted itself wrote."""
    ours = set(environ.get(INJECTED_VARS_MARKER, "").split(",")) - {""}
    ours.add(INJECTED_VARS_MARKER)
    return {k: v for k, v in environ.items() if k not in ours}


def _host_cpus(n_cpus: int | None, environ: Mapping[str, str]) -> int:
    """CPUs of this host: ``n_cpus`` if given, else measured here."""
    return n_cpus if n_cpus is not None else usable_cpus(environ=_user_environ(environ))


def _pinned(environ: Mapping[str, str]) -> frozenset[str]:
    """Libraries the user pinned, ignoring Dask's own nanny defaults.

    A nanny writes ``distributed.nanny.pre-spawn-environ`` (by default
    ``OMP_NUM_THREADS=1`` and the like) into every worker's environment; a
    variable still holding that default is Dask's, not the user's.
    """
    import dask

    defaults = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    kept = {k: v for k, v in environ.items() if str(defaults.get(k)) != v}
    return pinned_libraries(kept)


# -- worker side: seats and the batch (pools: budgeted.sharedpools) ----------
class _Slots:
    """Thread slots of the Dask workers in this process (lowest free first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, set[int]] = {}

    @contextlib.contextmanager
    def claim(self, worker: str, nthreads: int) -> Iterator[int]:
        with self._lock:
            taken = self._taken.setdefault(worker, set())
            slot = next(i for i in range(len(taken) + 1) if i not in taken)
            taken.add(slot)
        try:
            # A seceded task keeps its slot: extra threads share the last one.
            yield min(slot, nthreads - 1)
        finally:
            with self._lock:
                taken.discard(slot)


_SLOTS = _Slots()


class _BudgetedBatch:
    """A batch of joblib tasks run under the budget of its worker thread."""

    def __init__(self, tasks, plan: _Plan) -> None:
        self._summary = (len(tasks), _funcname(tasks))
        self.plan = plan

    def __repr__(self) -> str:
        n_tasks, name = self._summary
        return f"budgeted_batch_of_{name}_{n_tasks}_calls"

    def __call__(self, tasks=None):
        worker = distributed.get_worker()
        with (
            self._budget(worker.address),
            parallel_config(backend=BACKEND_NAME, n_cpus=self.plan.n_cpus),  # nested
        ):
            return [func(*args, **kwargs) for func, args, kwargs in tasks]

    @contextlib.contextmanager
    def _budget(self, address: str) -> Iterator[int]:
        seat = self.plan.seat(address)
        shares = seat.shares(_host_cpus(self.plan.n_cpus, os.environ))
        own_env = _here() != self.plan.client  # a worker process, not the client
        # A nanny's worker starts with Dask's values: any equal value is Dask's.
        # The client tells the user's pins from Dask's with its import snapshot.
        pinned = _pinned(os.environ) if own_env else pinned_libraries()
        with _SLOTS.claim(address, seat.nthreads) as slot:
            budget = self.plan.fixed or shares[slot]
            with (
                sharedpools.demanding(budget, pinned, own_env),
                budget_scope(budget, pinned, shared_pools=False),
            ):
                yield budget


def _funcname(tasks) -> str:
    try:
        return getattr(tasks[0][0], "__name__", type(tasks[0][0]).__name__)
    except (IndexError, TypeError):
        return "tasks"


# -- client side: the backend ------------------------------------------------------
class BudgetedDaskBackend(DaskBackendBase):
    """joblib's Dask backend, with each task under its host's thread budget.

    Use it through joblib, with a Dask ``Client`` (the default one, or
    ``client=``)::

        with parallel_config("budgeted-dask", n_cpus=None):
            Parallel()(delayed(f)(x) for x in xs)

    ``n_jobs`` is ignored as in joblib's Dask backend: calls use all threads of
    the cluster (``-1``). With a single worker thread in the whole cluster,
    :meth:`effective_n_jobs` reports 2 so that joblib still sends the tasks to
    the cluster (joblib runs ``n_jobs == 1`` in the client).

    Parameters
    ----------
    n_cpus : int, optional
        CPUs per host to plan for. Default: measured on each worker host
        (:func:`budgeted.usable_cpus`).
    client : distributed.Client, optional
        Default: the default client when the backend is first used
        (:func:`distributed.get_client`). Without one, using the backend
        raises ``ValueError`` (as joblib's Dask backend does); creating it
        never does, so code that builds every registered joblib backend with
        no arguments keeps working.
    nesting_level : int, optional
        Set by joblib.
    inner_max_num_threads : int, optional
        Give every task this budget instead (``parallel_config`` argument).
    **kwargs
        Passed to joblib's ``DaskDistributedBackend`` (``scheduler_host``,
        ``scatter``, ``wait_for_workers_timeout``, ``client.submit`` keywords).
    """

    supports_inner_max_num_threads = True

    def __init__(
        self,
        n_cpus: int | None = None,
        client=None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **kwargs,
    ) -> None:
        self.n_cpus = None if n_cpus is None else check_n_cpus(n_cpus)
        self.nesting_level = nesting_level
        self.inner_max_num_threads = inner_max_num_threads
        self._dask_kwargs = {"client": client, **kwargs}
        self._connected = False
        self._plan: _Plan | None = None
        self._aborted = False
        if client is not None:
            self._connect()

    def _connect(self) -> None:
        """Set up joblib's Dask backend on first use: find the Client.

        Raises
        ------
        ValueError
            Without a Client: joblib's message, then budgeted's.
        """
        if self._connected:
            return
        given = self.nesting_level, self.inner_max_num_threads
        try:
            super().__init__(**self._dask_kwargs)
        except ValueError as exc:
            if self._dask_kwargs["client"] is None and "Client" in str(exc):
                raise ValueError(f"{exc}\n\n{_NO_CLIENT}") from exc
            raise
        finally:  # joblib's __init__ resets what joblib set on the instance
            self.nesting_level, self.inner_max_num_threads = given
        self._connected = True

    def __reduce__(self):
        return BudgetedDaskBackend, (self.n_cpus,)

    def effective_n_jobs(self, n_jobs) -> int:
        """All threads of the cluster (at least 2, see the class docstring)."""
        if n_jobs is not None:
            effective_n_jobs(n_jobs, 1)  # raises on 0, 1.5, "four"
        self._connect()
        return max(2, super().effective_n_jobs(n_jobs))

    def configure(self, n_jobs=1, parallel=None, **backend_args) -> int:
        """Plan the call: seat every current worker on its host."""
        effective_n_jobs(_compat.configured_n_jobs(), 1)  # raises on 1.5, "four"
        self._connect()
        n_jobs = super().configure(n_jobs=n_jobs, parallel=parallel, **backend_args)
        workers = _workers(self.client)
        self._plan = _Plan(
            seats=plan_seats(workers),
            n_cpus=self.n_cpus,
            fixed=self.inner_max_num_threads,
        )
        return n_jobs

    def start_call(self) -> None:
        """A call starts: batches may be submitted."""
        self._aborted = False
        super().start_call()

    def make_batch(self, batch, tasks: list) -> _BudgetedBatch:
        """What is submitted for a batch: its tasks, under their thread's budget."""
        if self._aborted:  # submitted before the abort, not yet sent: drop it
            raise asyncio.CancelledError
        return _BudgetedBatch(tasks, self._plan)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop waiting for the submitted batches and cancel their futures."""
        self._aborted = True
        super().abort_everything(ensure_ready=ensure_ready)
        self._cancel_pending()

    def stop_call(self) -> None:
        """The call is over; after an abort, cancel what was sent meanwhile."""
        super().stop_call()
        if self._aborted:
            self._cancel_pending()

    def _cancel_pending(self) -> None:
        futures = self.drop_pending_futures()
        if futures:
            self.client.cancel(futures)

    def get_nested_backend(self):
        """The same backend (same client and ``n_cpus``) for nested calls."""
        client = self.client if self._connected else None
        return BudgetedDaskBackend(n_cpus=self.n_cpus, client=client), -1


# -- the environment path: a nanny plugin -------------------------------------------
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
        shares = plan_seats(workers)[own].shares(_host_cpus(self.n_cpus, environ))
        nanny.env.update(budget_env(shares[-1], _pinned(environ)))


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
    n_workers = len(_workers(client))
    client.register_plugin(WorkerEnvPlugin(n_cpus), name=PLUGIN_NAME)
    _wait_running(client, n_workers, timeout)
    return client.run(_env_budget)


def _wait_running(client, n_workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        workers = _workers(client).values()
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
