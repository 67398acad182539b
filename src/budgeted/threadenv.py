"""Applying a thread budget to the native thread pools of this process.

The libraries and their variables are :mod:`budgeted.threadlibs`' table;
this module limits the pools already loaded (threadpoolctl, or a library's
own ``set_num_threads``) and keeps the budget in force for
:func:`current_budget`.

OpenMP limits apply to the calling thread only; BLAS (OpenBLAS, MKL, BLIS,
FlexiBLAS) and torch limits are process-wide. threadpoolctl is not
thread-safe (threadpoolctl #205) and lets only one thread change OpenBLAS,
so every runtime change here takes one process-wide lock (and OpenBLAS
control for that change), and the :class:`threadpoolctl.ThreadpoolController` is
cached and rescanned only when new modules were imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Iterator, MutableMapping

from threadpoolctl import ThreadpoolController

from .cpus import usable_cpus
from .threadlibs import (  # noqa: F401 - the table, re-exported for callers
    INJECTED_VARS_MARKER,
    THREAD_LIBRARIES,
    ThreadLibrary,
    budget_env,
    idle_env,
    pinned_libraries,
    set_env,
    worker_env,
)

__all__ = [
    "THREAD_LIBRARIES",
    "ThreadLibrary",
    "budget_env",
    "idle_env",
    "budget_scope",
    "current_budget",
    "in_task",
    "limit_pools",
    "pinned_libraries",
    "set_worker_budget",
    "worker_env",
]

_LOCK = threading.RLock()
_controller: ThreadpoolController | None = None
_modules_at_scan = -1
_current: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "budgeted_current_budget", default=None
)
_process_budget: int | None = None


def _get_controller() -> ThreadpoolController:
    """Cached controller; rescanned when modules were imported since."""
    global _controller, _modules_at_scan
    if _controller is None or len(sys.modules) != _modules_at_scan:
        _modules_at_scan = len(sys.modules)
        _controller = ThreadpoolController()
    return _controller


def _selected(pinned: frozenset[str], per_thread: bool, shared_pools: bool):
    return [
        lib
        for lib in THREAD_LIBRARIES
        if lib.name not in pinned and (per_thread if lib.per_thread else shared_pools)
    ]


def limit_pools(
    n_threads: int,
    pinned: frozenset[str] = frozenset(),
    *,
    per_thread: bool = True,
    shared_pools: bool = True,
) -> list[tuple[object, int]]:
    """Limit the thread pools already loaded in this process to ``n_threads``.

    Parameters
    ----------
    n_threads : int
        The limit.
    pinned : frozenset of str
        Libraries left alone.
    per_thread : bool, default=True
        Limit per-thread pools (OpenMP) for the calling thread.
    shared_pools : bool, default=True
        Limit process-wide pools (BLAS, torch, numexpr).

    Returns
    -------
    list of (controller, int)
        What to pass to :func:`restore_pools` to undo the change.
    """
    previous: list[tuple[object, int]] = []
    with _LOCK:
        controller = _get_controller()
        for lib in _selected(pinned, per_thread, shared_pools):
            for target in _targets(lib, controller):
                old = target.get_num_threads()
                if old != n_threads:
                    _set_num_threads(target, n_threads)
                    previous.append((target, old))
    return previous


def _set_num_threads(target, n_threads: int) -> None:
    """Set a limit from any thread, under :data:`_LOCK`.

    threadpoolctl 3.8 lets only one "controlling thread" change a
    process-wide OpenBLAS pool and silently ignores the others. Budgets are
    planned for the whole process and every change here is serialised by
    our lock, so take control for the change and hand it back at once.
    """
    clear = getattr(type(target), "clear_controlling_thread", None)
    if clear is None:
        target.set_num_threads(n_threads)
        return
    clear(force=True)
    try:
        target.set_num_threads(n_threads)
    finally:
        clear()


def restore_pools(previous: list[tuple[object, int]]) -> None:
    """Undo :func:`limit_pools`, newest change first."""
    with _LOCK:
        for target, old in reversed(previous):
            if old is not None:
                _set_num_threads(target, old)


class _ModuleTarget:
    """Adapter giving a Python module's thread setter threadpoolctl's shape."""

    def __init__(self, module) -> None:
        self.module = module

    def get_num_threads(self) -> int | None:
        getter = getattr(self.module, "get_num_threads", None)
        return getter() if getter else None

    def set_num_threads(self, n_threads: int) -> None:
        self.module.set_num_threads(n_threads)


def _targets(lib: ThreadLibrary, controller: ThreadpoolController) -> list:
    targets: list = []
    if lib.internal_api is not None:
        targets += [
            lc
            for lc in controller.lib_controllers
            if lc.internal_api == lib.internal_api
        ]
    module = sys.modules.get(lib.python_module or "")
    if module is not None and hasattr(module, "set_num_threads"):
        targets.append(_ModuleTarget(module))
    return targets


def current_budget() -> int:
    """The thread budget in force for the calling code.

    Inside a task run by a budgeted backend this is the task's budget; in a
    worker of a :class:`budgeted.pool.BudgetedExecutor`, the worker's budget;
    elsewhere, the usable CPUs. User code can size its own pools with it.

    Returns
    -------
    int
    """
    budget = _current.get()
    if budget is None:
        budget = _process_budget
    return usable_cpus() if budget is None else budget


def in_task() -> bool:
    """Whether the calling code runs under a budget budgeted gave it.

    True inside a task of a budgeted backend or in a budgeted pool's worker:
    the CPUs it shares are already the enclosing task's.
    """
    return _current.get() is not None or _process_budget is not None


def set_worker_budget(n_threads: int | None) -> None:
    """Make ``n_threads`` the budget of this whole process (a pool worker).

    :func:`current_budget` returns it in every thread of the process outside
    a task's own budget; ``None`` goes back to the usable CPUs.
    """
    global _process_budget
    _process_budget = n_threads


@contextlib.contextmanager
def budget_scope(
    n_threads: int,
    pinned: frozenset[str] = frozenset(),
    *,
    environ: MutableMapping[str, str] | None = None,
    shared_pools: bool = True,
) -> Iterator[int]:
    """Run a block under a thread budget, then restore everything.

    The budget is set for :func:`current_budget`, applied to the thread pools
    already loaded (OpenMP for the calling thread; process-wide pools when
    ``shared_pools``), and, when ``environ`` is given, written there for
    libraries loaded inside the block.

    Parameters
    ----------
    n_threads : int
        The budget.
    pinned : frozenset of str
        Libraries left alone.
    environ : mutable mapping, optional
        Environment to write the budget variables into (``os.environ`` in a
        worker process). Not touched when ``None``.
    shared_pools : bool, default=True
        Also limit process-wide pools. Thread mode passes False and sets those
        once for all its threads.

    Yields
    ------
    int
        ``n_threads``.
    """
    token = _current.set(n_threads)
    saved_env = set_env(environ, budget_env(n_threads, pinned))
    previous = limit_pools(n_threads, pinned, shared_pools=shared_pools)
    try:
        yield n_threads
    finally:
        restore_pools(previous)
        set_env(environ, saved_env)
        _current.reset(token)
