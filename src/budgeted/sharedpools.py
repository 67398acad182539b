"""Process-wide thread pools shared by every thread-mode call of a process.

OpenMP limits belong to the calling thread, but BLAS (OpenBLAS, MKL, BLIS)
and torch limits hold for the whole process. Several thread-mode calls may run
in one process at once (two outer tasks, each with a nested ``Parallel``);
if each set and restored those pools on its own, the first to finish would
raise them under the feet of the others. So every live call *demands* a
limit here, and the pools are kept at the smallest demand::

    call A demands 1 ──┐
    call B demands 2 ──┼──> process-wide pools at min = 1
    call C demands 4 ──┘    (restored as found when the last call withdraws)

The environment of a budgeted worker (where the thread variables are
budgeted's own, or where a demand says the process's environment is ours, as
in a Dask worker process) follows the same minimum, so a library first loaded
by a thread starts within budget.

Callers: thread mode of :class:`~budgeted.BudgetedBackend` (one demand per
call) and the ``"budgeted-dask"`` backend (one demand per running batch, with
:func:`demanding`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Hashable, Iterator

from .threadenv import (
    INJECTED_VARS_MARKER,
    budget_env,
    limit_pools,
    restore_pools,
    set_env,
)

__all__ = ["active", "demand", "demanding", "withdraw"]

_lock = threading.RLock()
_demands: dict[Hashable, tuple[int, frozenset[str], bool]] = {}
_saved_pools: list[tuple[object, int]] = []
_saved_env: dict[str, str | None] = {}


def active() -> bool:
    """Whether a thread-mode call holds the process-wide pools now."""
    return bool(_demands)


def demand(
    key: Hashable, n_threads: int, pinned: frozenset[str], own_env: bool = False
) -> None:
    """Ask for process-wide pools of at most ``n_threads`` for ``key``'s call.

    Parameters
    ----------
    key : hashable
        Identifies the call; a new demand for the same key replaces the old.
    n_threads : int
        The smallest budget among the call's running tasks.
    pinned : frozenset of str
        Libraries the user pinned: left alone.
    own_env : bool, default=False
        This process's environment is budgeted's to set (a worker process)
        even without budgeted's marker variable in it.
    """
    with _lock:
        _demands[key] = (n_threads, pinned, own_env)
        _apply()


@contextlib.contextmanager
def demanding(
    n_threads: int, pinned: frozenset[str], own_env: bool = False
) -> Iterator[None]:
    """:func:`demand` for the duration of a block (one running batch)."""
    key = object()
    demand(key, n_threads, pinned, own_env)
    try:
        yield
    finally:
        withdraw(key)


def withdraw(key: Hashable) -> None:
    """Drop ``key``'s demand; restore the pools when no call is left."""
    global _saved_pools, _saved_env
    with _lock:
        if _demands.pop(key, None) is None:
            return
        if _demands:
            _apply()
            return
        restore_pools(_saved_pools)
        set_env(os.environ, _saved_env)
        _saved_pools, _saved_env = [], {}


def _apply() -> None:
    """Limit the pools to the smallest demand; remember what each was first."""
    n_threads = min(n for n, _, _ in _demands.values())
    pinned = frozenset().union(*(p for _, p, _ in _demands.values()))
    changed = limit_pools(n_threads, pinned, per_thread=False)
    seen = {_library_key(target) for target, _ in _saved_pools}
    _saved_pools.extend(c for c in changed if _library_key(c[0]) not in seen)
    own_env = any(own for _, _, own in _demands.values())
    if own_env or INJECTED_VARS_MARKER in os.environ:
        # In a budgeted worker the environment is ours to keep within budget.
        replaced = set_env(os.environ, budget_env(n_threads, pinned))
        for var, value in replaced.items():
            _saved_env.setdefault(var, value)


def _library_key(target) -> object:
    """The loaded library behind a pool controller (they are rebuilt on rescan)."""
    return getattr(target, "filepath", None) or id(getattr(target, "module", target))
