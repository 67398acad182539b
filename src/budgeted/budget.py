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
from collections.abc import Mapping

__all__ = [
    "N_JOBS_NOT_INT",
    "N_JOBS_ZERO",
    "check_n_cpus",
    "check_positive_int",
    "effective_n_jobs",
    "joblib_n_jobs",
    "positive_int_from_env",
    "split_budget",
    "task_budget",
]


#: joblib's message for ``n_jobs=0`` (``LokyBackend.effective_n_jobs``); ours
#: follows it, so code matching joblib's text matches ours.
N_JOBS_ZERO = "n_jobs == 0 in Parallel has no meaning"
#: joblib's ``Parallel`` message for an ``n_jobs`` that ``int()`` refuses.
N_JOBS_NOT_INT = "n_jobs could not be converted to int"


def _check_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise naming the value if it is not one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise naming it.

    Parameters
    ----------
    name : str
        The parameter's name, for the message.
    value : object
        What the user gave.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``value`` is not an integer (a bool, a float, a string...) or < 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_n_cpus(n_cpus: object) -> int:
    """Validate a CPU count given by the user (:func:`check_positive_int`)."""
    return check_positive_int("n_cpus", n_cpus)


def positive_int_from_env(environ: Mapping[str, str], var: str) -> int | None:
    """The positive integer in ``environ[var]``, or None when unset or blank.

    Raises
    ------
    ValueError
        Naming ``var`` and its value, when it is set to anything else.
    """
    raw = environ.get(var, "")
    if raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{var} must be a positive integer, got {raw!r}")
    return value


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


def joblib_n_jobs(n_jobs: object) -> int | None:
    """``n_jobs`` converted as joblib's ``Parallel`` converts it: ``int()``.

    So ``1.5`` and ``"2"`` are accepted (1 and 2) and ``0.5`` becomes 0,
    exactly as under joblib's own backends.

    Raises
    ------
    ValueError
        joblib's ``"n_jobs could not be converted to int"``, then the value.
    TypeError
        ``int()``'s own error (``[1]``), as joblib lets it through.

    Examples
    --------
    >>> joblib_n_jobs(1.5), joblib_n_jobs("2"), joblib_n_jobs(None)
    (1, 2, None)
    """
    if n_jobs is None:
        return None
    try:
        return int(n_jobs)
    except ValueError:
        raise ValueError(f"{N_JOBS_NOT_INT}: got {n_jobs!r}") from None


def effective_n_jobs(n_jobs: object, n_cpus: int) -> int:
    """Resolve ``n_jobs`` the way joblib and scikit-learn define it.

    Strict: only integers (or None) are accepted. The joblib backend first
    converts with :func:`joblib_n_jobs`, as joblib's ``Parallel`` does.

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
        If ``n_jobs`` is 0 (joblib's message :data:`N_JOBS_ZERO` first), or
        not an integer (a float, a string...).

    Examples
    --------
    >>> effective_n_jobs(-1, 8), effective_n_jobs(-2, 8), effective_n_jobs(None, 8)
    (8, 7, 1)
    """
    if n_jobs is None:
        return 1
    n_jobs = _check_int("n_jobs", n_jobs)
    if n_jobs == 0:
        raise ValueError(
            f"{N_JOBS_ZERO}: use None (1 worker), a positive integer,"
            " or -1 for all CPUs (-2 all but one...)"
        )
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
