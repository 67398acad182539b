"""A budgeted thread pool: threads of this process, each under its share.

Thread mode of :class:`budgeted.BudgetedBackend` and :func:`run_on_threads`
(pmatmat's thread method) are built on it::

    submit(func) ──> in flight += 1 ──> a pool thread runs BudgetedBatch(func)
                                          (budgeted.apply: slot, host CPUs,
                                           OpenMP of this thread = its share)
    pools shared by all threads (BLAS, torch): the smallest running share
      (budgeted.sharedpools), raised as batches finish
    shutdown(): threads joined, the shared pools' demand withdrawn
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import TypeVar

from . import sharedpools
from .apply import BudgetedBatch, demand_shared_pools
from .board import Board, InFlight
from .budget import check_n_cpus
from .hostwide import token_spec
from .plan import Plan
from .threadenv import budget_scope, current_budget, pinned_libraries

__all__ = ["BudgetedThreadPool", "run_on_threads"]

T = TypeVar("T")


class BudgetedThreadPool:
    """Threads of this process that share ``plan.n_cpus`` (see module docstring).

    Parameters
    ----------
    plan : Plan
        ``plan.n_slots`` threads; ``plan.processes`` must be False.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.board = Board.in_process(plan.n_slots)
        self.in_flight = InFlight(self.board)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            plan.n_slots, thread_name_prefix="budgeted"
        )
        # the smallest static share until the batches start
        demand_shared_pools(plan, self.board, static=True)

    def submit(self, func: Callable[[], T]) -> concurrent.futures.Future:
        """Run ``func()`` on a pool thread under its budget."""
        self.in_flight.add(+1)
        future = self._executor.submit(BudgetedBatch(func, self.plan, self.board))
        future.add_done_callback(self._batch_done)
        return future

    def _batch_done(self, future) -> None:
        self.in_flight.add(-1)
        # One batch fewer: the tail's shared pools may grow (the batch's own
        # update ran while it still counted).
        demand_shared_pools(self.plan, self.board)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the pool; with ``wait``, once its threads are done, let the
        shared pools go back to what they were."""
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            sharedpools.withdraw(self.board)


def run_on_threads(
    calls: Sequence[Callable[[], T]], n_cpus: int | None = None
) -> list[T]:
    """Run each call on its own budgeted thread; return the results in order.

    For callers whose tasks are known up front (:func:`budgeted.linalg.pmatmat`'s
    column blocks): it waits on the futures themselves, where ``Parallel``
    polls for results every 10 ms.

    Parameters
    ----------
    calls : sequence of callables
        Functions of no argument. A single call runs in the calling thread,
        with all ``n_cpus``.
    n_cpus : int, optional
        CPUs to share (default: the budget in force).

    Returns
    -------
    list
        ``[call() for call in calls]``. If calls raise, the exception of the
        first failing one (in the order given) is raised once every call has
        finished.
    """
    planned = current_budget() if n_cpus is None else check_n_cpus(n_cpus)
    if len(calls) <= 1:
        with budget_scope(planned, pinned_libraries()):
            return [call() for call in calls]
    plan = Plan(
        n_cpus=planned,
        n_slots=len(calls),
        pinned=pinned_libraries(),
        processes=False,
        tokens=token_spec(planned),
    )
    pool = BudgetedThreadPool(plan)
    try:
        pool.in_flight.start_call()
        futures = [pool.submit(call) for call in calls]
        pool.in_flight.dispatched()
        concurrent.futures.wait(futures)
        return [future.result() for future in futures]
    finally:
        pool.shutdown()
