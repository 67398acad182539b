"""The client side: ``BudgetedDaskBackend``, the ``"budgeted-dask"`` backend.

joblib's Dask backend, with each call planned from the scheduler's workers
and each batch submitted as a ``DaskBatch``
(:mod:`budgeted.distributed.worker`); aborting a call also cancels the
futures it submitted.
"""

from __future__ import annotations

import asyncio

from .. import _compat
from .._compat.dask_backend import DaskBackendBase
from ..budget import check_n_cpus, effective_n_jobs
from ..threadenv import in_task
from .scheduler import scheduler_workers
from .seats import plan_seats
from .worker import CallPlan, DaskBatch

__all__ = ["BudgetedDaskBackend"]

_NO_CLIENT = (
    'The "budgeted-dask" joblib backend needs a Dask Client: create one first,\n\n'
    "    from dask.distributed import Client, LocalCluster\n"
    "    client = Client(LocalCluster())            # on this machine, or\n"
    '    client = Client("tcp://scheduler:8786")    # an existing scheduler\n\n'
    'then use parallel_config("budgeted-dask") (or pass client=client).'
)


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
    ledger : bool, default=True
        Each batch holds its CPUs in its host's ledger
        (:mod:`budgeted.hostwide`), shared with the other budgeted programs
        of the user there (False, or ``BUDGETED_LEDGER=off`` in a worker's
        environment: local budgets only).
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
        ledger: bool = True,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **kwargs,
    ) -> None:
        self.n_cpus = None if n_cpus is None else check_n_cpus(n_cpus)
        self.ledger = bool(ledger)
        self.nesting_level = nesting_level
        self.inner_max_num_threads = inner_max_num_threads
        self._dask_kwargs = {"client": client, **kwargs}
        self._connected = False
        self._plan: CallPlan | None = None
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
        return BudgetedDaskBackend, (self.n_cpus, None, self.ledger)

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
        workers = scheduler_workers(self.client)
        self._plan = CallPlan(
            seats=plan_seats(workers),
            n_cpus=self.n_cpus,
            fixed=self.inner_max_num_threads,
            host_tokens=self.ledger and not in_task(),  # nested: the task's CPUs
        )
        return n_jobs

    def start_call(self) -> None:
        """A call starts: batches may be submitted."""
        self._aborted = False
        super().start_call()

    def make_batch(self, batch, tasks: list) -> DaskBatch:
        """What is submitted for a batch: its tasks, under their thread's budget."""
        if self._aborted:  # submitted before the abort, not yet sent: drop it
            raise asyncio.CancelledError
        return DaskBatch(tasks, self._plan)

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
        nested = BudgetedDaskBackend(self.n_cpus, client=client, ledger=self.ledger)
        return nested, -1
