"""Pure arithmetic of thread budgets: no ``os``, no processes, no threads.

A *budget* is how many threads one task may give its native thread pools.
``n_cpus`` usable CPUs are split over workers so that the budgets add up to
``n_cpus`` exactly (the remainder is spread, not dropped) and never go below 1::

    split_budget(16, 6) == (3, 3, 3, 3, 2, 2)
    split_budget(2, 8)  == (1, 1, 1, 1, 1, 1, 1, 1)   # never below 1

Work-conserving (dynamic) budgets split the CPUs over the tasks running now
instead of over all workers, so the tail of a job gets the idle CPUs.
"""

from __future__ import annotations

import numbers

__all__ = ["check_n_cpus", "effective_n_jobs", "split_budget", "task_budget"]


def _check_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise naming the value if it is not one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_n_cpus(n_cpus: object) -> int:
    """Validate a CPU count given by the user.

    Parameters
    ----------
    n_cpus : int
        Number of CPUs to plan for.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``n_cpus`` is not an integer or is below 1.
    """
    n_cpus = _check_int("n_cpus", n_cpus)
    if n_cpus < 1:
        raise ValueError(f"n_cpus must be >= 1, got {n_cpus}")
    return n_cpus


def split_budget(n_cpus: int, n_jobs: int) -> tuple[int, ...]:
    """Split ``n_cpus`` CPUs into one thread budget per worker.

    Parameters
    ----------
    n_cpus : int
        Usable CPUs (>= 1).
    n_jobs : int
        Number of workers (>= 1).

    Returns
    -------
    tuple of int
        ``n_jobs`` budgets, largest first, each >= 1. They sum to ``n_cpus``
        when ``n_jobs <= n_cpus``.

    Examples
    --------
    >>> split_budget(16, 6)
    (3, 3, 3, 3, 2, 2)
    >>> split_budget(2, 3)
    (1, 1, 1)
    """
    n_cpus = check_n_cpus(n_cpus)
    n_jobs = _check_int("n_jobs", n_jobs)
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1 to split a budget, got {n_jobs}")
    share, remainder = divmod(n_cpus, n_jobs)
    return tuple(max(1, share + (i < remainder)) for i in range(n_jobs))


def effective_n_jobs(n_jobs: object, n_cpus: int) -> int:
    """Resolve ``n_jobs`` the way joblib and scikit-learn define it.

    Parameters
    ----------
    n_jobs : int or None
        ``None`` means 1; ``-1`` all ``n_cpus``; ``-2`` all but one, and so on;
        a positive integer is taken as is.
    n_cpus : int
        Usable CPUs that negative values count from.

    Returns
    -------
    int
        The number of workers, >= 1.

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0, or not an integer (a float, a string...).

    Examples
    --------
    >>> effective_n_jobs(-1, 8), effective_n_jobs(-2, 8), effective_n_jobs(None, 8)
    (8, 7, 1)
    """
    if n_jobs is None:
        return 1
    n_jobs = _check_int("n_jobs", n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning: use None, a positive or -1")
    if n_jobs < 0:
        return max(check_n_cpus(n_cpus) + 1 + n_jobs, 1)
    return n_jobs


def task_budget(
    n_cpus: int, n_workers: int, slot: int, running: int | None = None
) -> int:
    """Budget of the task in worker slot ``slot``.

    Parameters
    ----------
    n_cpus : int
        CPUs to share.
    n_workers : int
        Workers (slots) of the pool.
    slot : int
        This task's rank: its slot for a static budget, its rank among the
        running tasks for a dynamic one.
    running : int, optional
        Tasks running (or about to run) now, this one included. ``None`` gives
        the static budget ``split_budget(n_cpus, n_workers)[slot]``; otherwise
        the CPUs are split over ``min(running, n_workers)`` tasks.

    Returns
    -------
    int

    Examples
    --------
    >>> task_budget(8, 4, slot=0), task_budget(8, 4, slot=0, running=1)
    (2, 8)
    """
    active = n_workers if running is None else min(max(running, 1), n_workers)
    shares = split_budget(n_cpus, active)
    return shares[min(slot, active - 1)]
