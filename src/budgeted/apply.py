"""The one worker-side path: what runs around each batch of tasks.

Every budgeted pool (the joblib backend in both modes, :class:`budgeted.pool.
BudgetedExecutor`, :class:`budgeted.threads.BudgetedThreadPool`) applies
budgets here: claim a slot, hold host CPUs, apply the plan's budget, run.

joblib hands the backend one callable per *batch* (auto-batching groups tiny
tasks), so the budget is decided once per batch, not per task::

    parent                          worker (process or thread)
    ──────                          ──────────────────────────
    submit(BudgetedBatch) ───────>  slot = board.claim()
      in_flight += 1                lease: wait for one host CPU (token)
                                    budget = plan.budget(board, slot),
                                      capped by the host tokens held
                                    with budget_scope(budget):   # env + pools
                                        run the batch
    on completion     <───────────  tokens given back; board.release(slot)
      in_flight -= 1

With ``dynamic`` budgets, a batch splits the CPUs over the batches running or
queued when it starts, so the tail of a job gets the idle CPUs. In a worker
process, a small :class:`_Rebalancer` thread keeps the *process-wide* pools
(BLAS, torch) at the running batch's share as other batches finish or start:
a long BLAS batch at the tail speeds up when the others are done. OpenMP
limits belong to the calling thread and are set when the batch starts.

Host-wide tokens (:mod:`budgeted.hostwide`): when the plan names a token
source, a batch first holds one CPU of it (waiting if none is free), then
takes as many more as its budget asks and are free; the rebalancer takes
more as they come free, up to the budget.

Work outside joblib (a refit after a grid search, a model fit between two
calls) runs on the same path through :func:`hold_cpus`: hold CPUs from the
program's token source, apply them as the block's budget, give them back.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from collections.abc import Iterator

from . import _compat, sharedpools
from .board import Board, open_board
from .budget import check_n_cpus, check_positive_int
from .cpus import usable_cpus
from .hostwide import tokens_for_this_process
from .hostwide.lease import Lease, holding, leased
from .leftovers import pid_alive
from .plan import Plan
from .threadenv import (
    budget_env,
    budget_scope,
    current_budget,
    in_task,
    limit_pools,
    pinned_libraries,
    set_worker_budget,
)

__all__ = [
    "BudgetedBatch",
    "Pickled",
    "call_holding_cpus",
    "demand_shared_pools",
    "enter_worker",
    "held_budget",
    "hold_cpus",
    "run_with_budget",
]

#: How long a batch waits for the parent to finish dispatching a call's first
#: batches before it settles for the static share.
DISPATCH_WAIT = 0.05
#: How often the rebalancer looks at the board while a batch runs (seconds).
REBALANCE_PERIOD = 0.005


class BudgetedBatch:
    """A joblib batch wrapped so it runs under its thread budget.

    Parameters
    ----------
    batch : callable
        What joblib submitted (a ``BatchedCalls``).
    plan : Plan
        How the pool's CPUs are shared.
    board : Board
        The pool's board (sent to worker processes by path).
    """

    __slots__ = ("batch", "plan", "board", "pickler")

    def __init__(self, batch, plan: Plan, board: Board, pickler=None) -> None:
        self.batch = batch
        self.plan = plan
        self.board = board
        self.pickler = pickler

    def __reduce__(self):
        board = str(self.board.path)
        if self.pickler is None:
            return _rebuild_batch, (self.batch, self.plan, board)
        # sent pickled inside the pickle: the worker loads it (and imports the
        # modules it needs) only once it holds the batch's CPUs
        return _rebuild_batch, (Pickled(self.pickler(self.batch)), self.plan, board)

    def __call__(self):
        if self.plan.processes:
            return self._run_in_process()
        return self._run_in_thread()

    def _decide_budget(self, slot: int) -> int:
        if self.plan.dynamic:
            self.board.wait_dispatched(DISPATCH_WAIT)
        return self.plan.budget(self.board, slot)

    def _held(self, lease: Lease | None, slot: int, budget: int | None = None) -> int:
        """The batch's budget, as far as the host CPUs its lease holds allow."""
        budget = self._decide_budget(slot) if budget is None else budget
        if lease is None or self.plan.fixed is None:  # the budget is the share
            return held_budget(lease, budget, budget)
        return held_budget(lease, budget, self.plan.share(self.board, slot))

    def _holding(self, owner: int, slot: int, alive=None):
        """The batch's host CPUs (a :class:`Lease`, or None without tokens).

        Slots beyond the planned CPUs (``n_jobs`` above ``n_cpus``: more
        workers than CPUs, asked for on purpose, e.g. for tasks that wait on
        each other or on I/O) take no tokens and run on budgets of 1.
        """
        spec = self.plan.tokens if slot < self.plan.n_cpus else None
        return _holding_on(spec, self.board, owner, slot, alive)

    def _run_in_process(self):
        owner = os.getpid()
        slot = self.board.claim(owner, alive=pid_alive)
        try:
            with self._holding(owner, slot, pid_alive) as lease:
                budget = self._held(lease, slot)
                with budget_scope(budget, self.plan.pinned, environ=os.environ):
                    batch = _loaded(self.batch)
                    _rebalancer().watch(self.plan, self.board, slot, budget, lease)
                    try:
                        return batch()
                    finally:
                        _rebalancer().unwatch()
        finally:
            self.board.release(slot, owner)

    def _run_in_thread(self):
        owner = threading.get_native_id()
        slot = self.board.claim(owner)
        try:
            with self._holding(owner, slot) as lease:
                planned = self._decide_budget(slot)
                budget = self._held(lease, slot, planned)
                demand_shared_pools(self.plan, self.board)
                with (
                    _below_plan(budget, planned, self.plan.pinned),
                    budget_scope(budget, self.plan.pinned, shared_pools=False),
                ):
                    return self.batch()
        finally:
            # The backend's done callback updates the process-wide pools once
            # the batch no longer counts as in flight.
            self.board.release(slot, owner)


class Pickled:
    """A batch or call still pickled (its bytes), as a worker receives it:
    loaded once the worker holds its CPUs (:func:`_loaded`)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self):
        return Pickled, (self.payload,)


def _loaded(batch):
    """``batch``, unpickled if it came pickled.

    Raises
    ------
    BrokenProcessPool
        With loky's words, as loky raises when its worker cannot load a task
        (the worker and its pool live on here), from the loading error.
    """
    if not isinstance(batch, Pickled):
        return batch
    try:
        return pickle.loads(batch.payload)
    except BaseException as exc:
        raise _compat.BrokenProcessPool(
            f"{_compat.UNSERIALIZE_MESSAGE} (budgeted: worker {os.getpid()} "
            f"could not load the batch: {type(exc).__name__}: {exc})"
        ) from exc


def _holding_on(spec, board: Board, owner: int, slot: int, alive=None):
    """:func:`~budgeted.hostwide.lease.holding`, with the program's implicit
    token kept in ``board``'s cell for ``owner``, and the CPUs held in
    ``slot``'s cell (the program's count, its place in the queue)."""
    return holding(
        spec,
        lambda: board.take_implicit(owner, alive),
        lambda: board.give_implicit(owner),
        share=_SlotShare(board, slot),
    )


class _SlotShare:
    """A batch's view of its program's share (:class:`~budgeted.hostwide.
    lease.ProgramShare`): the board's cells, from its slot."""

    __slots__ = ("board", "slot")

    def __init__(self, board: Board, slot: int) -> None:
        self.board, self.slot = board, slot

    @property
    def waiting(self) -> int:
        return self.board.waiting

    def report(self, cpus: int) -> None:
        self.board.set_held(self.slot, cpus)

    def held(self) -> int:
        return self.board.held()

    def add_waiting(self, change: int) -> None:
        self.board.add_waiting(self.slot, change)


def held_budget(lease: Lease | None, budget: int, share: int) -> int:
    """``budget`` if the lease holds the task's share of host CPUs, else what
    it holds (it takes more only if they are free now).

    A ``budget`` above ``share`` (``inner_max_num_threads``, LensKit's
    ``backend_threads``) is oversubscription the user asked for: only the
    share is taken from the host, so one task cannot take every CPU while
    the others wait.
    """
    if lease is None:
        return budget
    want = min(budget, share)
    held = lease.fit(want)
    return budget if held >= want else held


def _below_plan(budget: int, planned: int, pinned: frozenset[str]):
    """Thread mode: keep process-wide pools at a token-capped budget too."""
    if budget >= planned:
        return contextlib.nullcontext()
    return sharedpools.demanding(budget, pinned)


def run_with_budget(budget: int, func, *args, pinned: frozenset[str] = frozenset()):
    """``func(*args)`` in this worker process under ``budget`` (environment
    and pools), restored after: a task whose share its caller decided."""
    with budget_scope(budget, pinned, environ=os.environ):
        return func(*args)


_worker_slot: int | None = None


def enter_worker(plan: Plan, board_path: str) -> int:
    """A pool worker takes its slot for life and applies its budget; returns it.

    A worker that replaces a dead one takes the dead one's slot, so its share
    comes back. The budget stays in force in the whole process (its
    environment, its pools, :func:`budgeted.current_budget`).
    """
    global _worker_slot
    try:
        board = open_board(board_path)
    except FileNotFoundError:  # the pool was shut down while we started
        budget = plan.smallest_budget()
    else:
        _worker_slot = board.claim(os.getpid(), alive=pid_alive)
        budget = plan.budget(board, _worker_slot)
    os.environ.update(budget_env(budget, plan.pinned))
    limit_pools(budget, plan.pinned)
    set_worker_budget(budget)
    return budget


def call_holding_cpus(plan: Plan, board_path: str, call: Pickled):
    """A pool worker's call: hold its budget's CPUs on the host, then run.

    Waits for one host CPU, takes up to the worker's budget if free, loads
    the call (``(func, args, kwargs)``, pickled) and runs it under what it
    holds; the CPUs go back when the call ends. A worker beyond the planned
    CPUs takes none (see :class:`BudgetedBatch`).
    """
    budget = current_budget()
    if _worker_slot is None or _worker_slot >= plan.n_cpus:
        func, args, kwargs = _loaded(call)
        return func(*args, **kwargs)
    board = open_board(board_path)
    with _holding_on(plan.tokens, board, os.getpid(), _worker_slot, pid_alive) as lease:
        held = held_budget(lease, budget, plan.share(board, _worker_slot))
        scope = contextlib.nullcontext()
        if held < budget:  # else the worker's own budget is in force already
            scope = budget_scope(held, plan.pinned, environ=os.environ)
        with scope:
            func, args, kwargs = _loaded(call)
            return func(*args, **kwargs)


@contextlib.contextmanager
def hold_cpus(
    n_threads: int | None = None, *, n_cpus: int | None = None
) -> Iterator[int]:
    """Run a block of work outside joblib on CPUs held from the host.

    Work that no ``Parallel`` call runs (the refit of the best estimator
    after a grid search, a fit between two calls) holds no host-wide token:
    beside other budgeted programs it would oversubscribe the CPUs. In this
    block it holds them as a batch does: it waits (sleeping, in the queue
    of waiters) for one CPU of the program's token source, takes up to
    ``n_threads`` if they are free now, and runs with the thread pools
    limited to what it holds. The CPUs go back when the block ends, also on
    an exception. Without a token source (``BUDGETED_LEDGER=off``) it only
    limits the pools; inside a budgeted task or worker it takes no token
    (the task's CPUs are held already) and stays within the task's budget.
    A ``Parallel`` call inside the block plans for the CPUs held. Under a
    make jobserver the block's first CPU is the program's own implicit one,
    also if a batch of a ``Parallel`` call running meanwhile in another
    thread holds it (one CPU too many while both run).

    Parameters
    ----------
    n_threads : int, optional
        The most CPUs to hold (default: all that ``n_cpus`` plans for).
    n_cpus : int, optional
        The CPUs this program plans for (default: the usable CPUs); it
        sizes the ledger as a pool's ``n_cpus`` does.

    Yields
    ------
    int
        The CPUs held: the block's thread budget.

    Examples
    --------
    >>> search = GridSearchCV(est, grid, refit=False).fit(X, y)  # doctest: +SKIP
    >>> with budgeted.hold_cpus():  # doctest: +SKIP
    ...     best = est.set_params(**search.best_params_).fit(X, y)
    """
    planned = usable_cpus() if n_cpus is None else check_n_cpus(n_cpus)
    want = planned if n_threads is None else check_positive_int("n_threads", n_threads)
    pinned = pinned_libraries()
    if in_task():
        with budget_scope(min(want, current_budget()), pinned) as budget:
            yield budget
        return
    source = tokens_for_this_process(planned)
    if source is None:
        with budget_scope(min(want, planned), pinned) as budget:
            yield budget
        return
    # the program's own implicit CPU (a jobserver's) is this process's
    with (
        leased(source, lambda: True, lambda: None) as lease,
        budget_scope(lease.fit(min(want, planned)), pinned) as budget,
    ):
        yield budget


def _rebuild_batch(batch, plan: Plan, board_path: str) -> BudgetedBatch:
    return BudgetedBatch(batch, plan, open_board(board_path))


def demand_shared_pools(plan: Plan, board: Board, static: bool = False) -> None:
    """Thread mode: ask for process-wide pools at the smallest running budget.

    BLAS and torch limits are shared by all threads of a process, so the one
    value that never oversubscribes is the smallest budget among running
    tasks, of this call and of every other thread-mode call in the process
    (:mod:`budgeted.sharedpools` keeps the minimum). ``static`` uses the
    smallest static share, before any batch runs.
    """
    smallest = plan.smallest_budget(None if static else board)
    sharedpools.demand(board, smallest, plan.pinned)


class _Rebalancer(threading.Thread):
    """Keeps a worker process's process-wide pools at its batch's share."""

    def __init__(self) -> None:
        super().__init__(name="budgeted-rebalancer", daemon=True)
        self._lock = threading.Lock()
        self._active = threading.Event()
        self._watched: tuple[Plan, Board, int, Lease | None] | None = None
        self._applied = self._start_budget = 0

    def watch(
        self, plan: Plan, board: Board, slot: int, budget: int, lease: Lease | None
    ) -> None:
        if plan.fixed is not None or not (plan.dynamic or lease is not None):
            return
        with self._lock:
            self._watched, self._applied = (plan, board, slot, lease), budget
            self._start_budget = budget
            self._active.set()

    def unwatch(self) -> None:
        with self._lock:
            self._watched = None
            self._active.clear()

    def run(self) -> None:  # pragma: no cover - runs in worker processes
        while True:
            self._active.wait()
            time.sleep(REBALANCE_PERIOD)
            with self._lock:
                if self._watched is None or sharedpools.active():
                    continue
                plan, board, slot, lease = self._watched
                budget = plan.budget(board, slot)
                if lease is not None:
                    # OpenMP keeps the size it started with: so do its tokens
                    budget = min(budget, lease.fit(max(budget, self._start_budget)))
                if budget != self._applied:
                    limit_pools(budget, plan.pinned, per_thread=False)
                    self._applied = budget


_REBALANCER: _Rebalancer | None = None


def _rebalancer() -> _Rebalancer:
    global _REBALANCER
    if _REBALANCER is None:
        _REBALANCER = _Rebalancer()
        _REBALANCER.start()
    return _REBALANCER
