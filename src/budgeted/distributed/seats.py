"""Where each Dask worker sits among the threads of its host: pure planning.

:func:`plan_seats` reads the scheduler's list of workers (a plain mapping)
and gives every worker a :class:`Seat`; a seat and the host's CPUs give the
worker's budgets. Nothing here talks to Dask or reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..budget import split_budget

__all__ = ["Seat", "plan_seats"]


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
        """This worker's budgets, one per thread slot, largest first.

        >>> Seat(host_threads=3, first=1, nthreads=2).shares(8)
        (3, 2)
        """
        budgets = split_budget(host_cpus, self.host_threads)
        return budgets[self.first : self.first + self.nthreads]

    def smallest_share(self, host_cpus: int) -> int:
        """The smallest of :meth:`shares`: its last slot's budget.

        The one budget that holds whatever runs in the worker: any thread
        slot, and the threads beyond the worker's count (they share the last
        slot).

        >>> Seat(host_threads=3, first=1, nthreads=2).smallest_share(8)
        2
        """
        return self.shares(host_cpus)[-1]


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
