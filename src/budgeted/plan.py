"""The plan of a budgeted pool: how its CPUs are shared among its tasks.

Pure arithmetic over :mod:`budgeted.budget` and the board's counts, decided
in the parent and carried by every batch to the worker side
(:mod:`budgeted.apply`)::

    Plan(n_cpus=16, n_slots=6)          static shares  3 3 3 3 2 2
      .budget(board, slot)              dynamic share of a batch, from the
                                        batches in flight on the board
      .smallest_budget(board)           what pools shared by threads may use
      .shares(running)                  the tail: fewer tasks, larger shares
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .budget import split_budget, task_budget

if TYPE_CHECKING:  # plan.py stays below the apply path: names only
    from .board import Board
    from .hostwide.lease import TokenSpec

__all__ = ["Plan"]


@dataclass(frozen=True)
class Plan:
    """How a pool's CPUs are shared; travels with every batch.

    Attributes
    ----------
    n_cpus : int
        CPUs to share among the pool's tasks.
    n_slots : int
        Workers in the pool.
    dynamic : bool
        Split over the batches in flight rather than over all workers.
    fixed : int or None
        A budget imposed on every task (``inner_max_num_threads``).
    pinned : frozenset of str
        Libraries whose thread variable the user set: left alone.
    processes : bool
        Worker processes (True) or threads of the calling process (False).
    tokens : TokenSpec or None
        The program's host-wide token source (None: local budgets only).
    """

    n_cpus: int
    n_slots: int
    dynamic: bool = True
    fixed: int | None = None
    pinned: frozenset[str] = frozenset()
    processes: bool = True
    tokens: TokenSpec | None = None

    def budget(self, board: Board, slot: int) -> int:
        """Budget of the batch holding ``slot`` now (``fixed`` if set)."""
        return self.fixed if self.fixed is not None else self.share(board, slot)

    def share(self, board: Board, slot: int) -> int:
        """The slot's share of ``n_cpus`` now, whatever ``fixed`` says.

        What a batch holds of the host's CPUs: a ``fixed`` budget above it is
        oversubscription the user asked for, not CPUs taken from others.
        """
        if not self.dynamic:
            return task_budget(self.n_cpus, self.n_slots, slot)
        rank, running = self.running(board, slot)
        return task_budget(self.n_cpus, self.n_slots, rank, running=running)

    def running(self, board: Board, slot: int) -> tuple[int, int]:
        """This batch's rank among running ones, and how many share the CPUs."""
        in_flight = board.in_flight
        rank, busy = board.rank(slot)
        running = max(busy, min(in_flight, self.n_slots))
        if in_flight < 0 or running >= self.n_slots:
            # Still dispatching, or a full pool: the static share, by slot, so
            # shares stay distinct while the other slots are being claimed.
            return slot, self.n_slots
        return rank, running

    def smallest_budget(self, board: Board | None = None) -> int:
        """The smallest budget of the batches running now (thread mode's BLAS).

        Without a board: the smallest static share, for a full pool.
        """
        if self.fixed is not None:
            return self.fixed
        active = self.n_slots
        if self.dynamic and board is not None and board.in_flight >= 0:
            _, busy = board.rank(0)
            active = max(1, busy, min(board.in_flight, self.n_slots))
        return task_budget(self.n_cpus, self.n_slots, active - 1, running=active)

    def static_budgets(self) -> tuple[int, ...]:
        """Every slot's budget in a full pool (``inner_max_num_threads`` for all)."""
        if self.fixed is not None:
            return (self.fixed,) * self.n_slots
        return split_budget(self.n_cpus, self.n_slots)

    def shares(self, running: int) -> tuple[int, ...]:
        """Budgets of ``running`` tasks sharing the pool's CPUs (the tail of a job)."""
        if self.fixed is not None:
            return (self.fixed,) * running
        running = max(1, min(running, self.n_slots))
        return tuple(
            task_budget(self.n_cpus, self.n_slots, rank, running=running)
            for rank in range(running)
        )
