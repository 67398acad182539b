"""A process pool whose workers each run under their own thread budget.

For layers that keep state in their workers (a model, an operator) and so
need a long-lived pool rather than joblib's per-call batches::

    parent                                   worker process (spawned by loky)
    ──────                                   ────────────────────────────────
    BudgetedExecutor(n_workers)              watch_parent(parent pid): dies with it
      board file: one slot per worker ─────> slot = board.claim(pid)
      env: the smallest share                budget = split_budget(...)[slot]
                                             os.environ <- budget_env(budget)
                                             limit_pools(budget)
                                             initializer(*initargs)
    submit(fn, ...) ───────────────────────> host CPUs held (budgeted.hostwide),
                                             fn(...) under that budget
    shutdown(): workers stop, board removed

A worker that dies and is respawned claims the dead worker's slot, so its
replacement gets the same share back. Workers are started by joblib's own
copy of loky (or ``spawn``/``forkserver``), never by ``fork``: importing the
standalone ``loky`` package beside joblib's would replace joblib's ``"loky"``
start method for the whole process (see :func:`budgeted._compat.loky_context`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

from . import _compat
from .apply import Pickled, call_holding_cpus, enter_worker
from .board import Board
from .budget import check_n_cpus, check_positive_int, effective_n_jobs
from .hostwide import token_spec
from .lifeline import watch_parent
from .plan import Plan
from .tempdir import remove_stale_folders, stale_search_dirs
from .threadenv import budget_env, current_budget, idle_env, pinned_libraries

__all__ = ["BudgetedExecutor", "budgeted_executor"]

#: Start methods a budgeted pool accepts: none of them forks a live process.
START_METHODS = ("loky", "spawn", "forkserver")


class BudgetedExecutor(_compat.LokyProcessPoolExecutor):
    """A loky process pool whose workers split the CPUs between them.

    Parameters
    ----------
    n_workers : int
        Worker processes, with joblib's ``n_jobs`` meaning (``-1``: one per
        planned CPU).
    n_cpus : int, optional
        CPUs to split over the workers. Default: the budget in force here
        (:func:`budgeted.current_budget`), i.e. the usable CPUs, or the
        enclosing task's budget inside a task.
    threads_per_worker : int, optional
        Give every worker this budget instead of a share of ``n_cpus``.
    initializer : callable, optional
        Run in each worker after its budget is applied.
    initargs : tuple
        Arguments of ``initializer``.
    context : {"loky", "spawn", "forkserver"}, default="loky"
        How workers are started.
    idle_timeout : float, optional
        Seconds after which an idle worker exits (loky's ``timeout``); it is
        respawned, with the same share, when work comes.

    Attributes
    ----------
    plan : budgeted.plan.Plan
        How the workers share the CPUs.
    budgets : tuple of int
        The budget of each worker slot.
    """

    def __init__(
        self,
        n_workers: int,
        *,
        n_cpus: int | None = None,
        threads_per_worker: int | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        context: str = "loky",
        idle_timeout: float | None = None,
    ) -> None:
        if context not in START_METHODS:
            raise ValueError(
                f"context must be one of {START_METHODS} (never fork), got {context!r}"
            )
        planned = current_budget() if n_cpus is None else check_n_cpus(n_cpus)
        n_workers = effective_n_jobs(n_workers, planned)
        fixed = None
        if threads_per_worker is not None:
            fixed = check_positive_int("threads_per_worker", threads_per_worker)
        self.plan = Plan(
            n_cpus=planned,
            n_slots=n_workers,
            dynamic=False,
            fixed=fixed,
            pinned=pinned_libraries(),
            tokens=token_spec(planned),
        )
        self.budgets = self.plan.static_budgets()
        # A long-lived pool starts rarely: search every time for what killed
        # processes left (loky semaphores, memmap folders), not once.
        remove_stale_folders(stale_search_dirs())
        self._board = Board.create_file(n_workers)
        self._release_board = weakref.finalize(self, self._board.close, True)
        super().__init__(
            max_workers=n_workers,
            context=_compat.loky_get_context(context),
            initializer=_start_worker,
            initargs=(
                os.getpid(),
                str(self._board.path),
                self.plan,
                initializer,
                tuple(initargs),
            ),
            env={
                **budget_env(self.plan.smallest_budget(), self.plan.pinned),
                **idle_env(self.plan.pinned),
            },
            timeout=idle_timeout,
        )

    def submit(self, fn: Callable, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` in a worker, holding its CPUs meanwhile.

        With host-wide tokens (:mod:`budgeted.hostwide`), a call waits for its
        worker's CPUs to be free on the host, and gives them back when done.
        """
        if self.plan.tokens is None:
            return super().submit(fn, *args, **kwargs)
        # loaded in the worker once it holds the CPUs (its imports with them)
        call = Pickled(_compat.job_pickler(self)((fn, args, kwargs)))
        return super().submit(call_holding_cpus, self.plan, str(self._board.path), call)

    def shutdown(self, wait: bool = True, kill_workers: bool = False) -> None:
        """Stop the workers and remove the pool's shared slot table."""
        super().shutdown(wait=wait, kill_workers=kill_workers)
        self._release_board()


def budgeted_executor(n_workers: int, **kwargs) -> BudgetedExecutor:
    """Start a process pool whose workers each run under their own budget.

    Parameters
    ----------
    n_workers : int
        Worker processes (joblib ``n_jobs`` meaning).
    **kwargs
        ``n_cpus``, ``threads_per_worker``, ``initializer``, ``initargs``,
        ``context``, ``idle_timeout``: see :class:`BudgetedExecutor`.

    Returns
    -------
    BudgetedExecutor
        A :class:`concurrent.futures.Executor`; use it in a ``with`` block or
        call ``shutdown()``.

    Examples
    --------
    >>> from budgeted import current_budget
    >>> with budgeted_executor(2, n_cpus=6) as pool:  # doctest: +SKIP
    ...     sorted(pool.map(lambda _: current_budget(), range(2)))
    [3, 3]
    """
    return BudgetedExecutor(n_workers, **kwargs)


def _start_worker(
    parent_pid: int, board_path: str, plan: Plan, initializer, initargs
) -> None:
    """Worker initializer: watch the parent, take a budget, run the user's."""
    watch_parent(parent_pid)
    enter_worker(plan, board_path)
    if initializer is not None:
        initializer(*initargs)
