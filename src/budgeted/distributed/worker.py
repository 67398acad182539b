"""The worker side: a submitted batch runs under its worker thread's budget.

The client submits a :class:`DaskBatch` carrying the :class:`CallPlan`; in
the worker thread that runs it, the batch takes the lowest free thread slot
of its worker, that slot's share of the host, holds that many CPUs of its
host's ledger (:mod:`budgeted.hostwide`: waiting, sleeping, for the first
one), and applies what it holds (OpenMP for this thread, the process-wide
pools through :mod:`budgeted.sharedpools`).

Thread slots beyond the host's CPUs (more Dask threads than CPUs, asked for
on purpose) take no tokens, as in the ``"budgeted"`` backend, and nor do
nested calls (their task holds the CPUs). Under a make jobserver, batches
take no tokens either: a Dask worker is not a make recipe and owns no
implicit token, so a ``make -j1`` would leave it waiting for ever.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import distributed
from joblib import parallel_config

from .. import sharedpools
from ..apply import held_budget
from ..hostwide import tokens_for_this_process
from ..hostwide.lease import leased
from ..threadenv import budget_scope, pinned_libraries
from .environ import host_cpus, user_pins
from .scheduler import seat_from_scheduler
from .seats import Seat

__all__ = ["BACKEND_NAME", "CallPlan", "DaskBatch"]

#: The name ``budgeted.registration`` registers the backend under (the same
#: literal there: registration imports this package lazily, never the
#: reverse). Here, because a batch's nested calls use it.
BACKEND_NAME = "budgeted-dask"


def _here() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


@dataclass(frozen=True)
class CallPlan:
    """What every batch of one call carries to the workers."""

    seats: Mapping[str, Seat]
    n_cpus: int | None = None
    fixed: int | None = None
    client: tuple[str, int] = field(default_factory=_here)
    #: Whether batches hold CPUs of their host's ledger (not in nested calls).
    host_tokens: bool = True

    def seat(self, address: str) -> Seat:
        """The seat of the worker at ``address``, asked for if it joined since."""
        seat = self.seats.get(address)
        return seat if seat is not None else seat_from_scheduler(address)


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


class DaskBatch:
    """A batch of joblib tasks run under the budget of its worker thread."""

    def __init__(self, tasks, plan: CallPlan) -> None:
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
        cpus = host_cpus(self.plan.n_cpus, os.environ)
        shares = seat.shares(cpus)
        own_env = _here() != self.plan.client  # a worker process, not the client
        # A nanny's worker starts with Dask's values: any equal value is Dask's.
        # The client tells the user's pins from Dask's with its import snapshot.
        pinned = user_pins(os.environ) if own_env else pinned_libraries()
        with (
            _SLOTS.claim(address, seat.nthreads) as slot,
            self._host_cpus(cpus, seat.first + slot) as lease,
        ):
            share = shares[slot]
            budget = held_budget(lease, self.plan.fixed or share, share)
            with (
                sharedpools.demanding(budget, pinned, own_env),
                budget_scope(budget, pinned, shared_pools=False),
            ):
                yield budget

    def _host_cpus(self, cpus: int, thread: int):
        """The batch's CPUs on its host's ledger (see the module docstring)."""
        if not self.plan.host_tokens or thread >= cpus:
            return contextlib.nullcontext()
        source = tokens_for_this_process(cpus)
        if source is None or source.implicit:  # no ledger, or a jobserver
            return contextlib.nullcontext()
        return leased(source)


def _funcname(tasks) -> str:
    try:
        return getattr(tasks[0][0], "__name__", type(tasks[0][0]).__name__)
    except (IndexError, TypeError):
        return "tasks"
