"""The thread-library table, and the environment that limits each library.

Library knowledge is data: one :class:`ThreadLibrary` per library, in the
:data:`THREAD_LIBRARIES` registry. The same entry drives both paths, so they
cannot drift apart:

* the *environment* path (here: :func:`budget_env`, :func:`worker_env`):
  variables a library reads when it is loaded, set in worker processes
  before a task imports anything; :func:`pinned_libraries` tells the
  variables the user set (left alone) from budgeted's and Dask's;
* the *runtime* path (:mod:`budgeted.threadenv`): libraries already loaded,
  limited with threadpoolctl (or their own ``set_num_threads``).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from .cpus import MAX_CPU_COUNT_VAR

__all__ = [
    "INJECTED_VARS_MARKER",
    "THREAD_LIBRARIES",
    "ThreadLibrary",
    "budget_env",
    "idle_env",
    "pinned_libraries",
    "set_env",
    "worker_env",
]


@dataclass(frozen=True)
class ThreadLibrary:
    """A native library with a thread pool that budgets must limit.

    Attributes
    ----------
    name : str
        Short name, used in ``pinned`` sets and diagnostics.
    env_vars : tuple of str
        Variables the library reads when it is loaded.
    internal_api : str or None
        threadpoolctl's ``internal_api`` for the library, if it controls it.
    python_module : str or None
        Module with a ``set_num_threads(n)`` function, used when imported.
    per_thread : bool
        True when a limit applies to the calling thread only (OpenMP).
    also_reads : tuple of str
        Variables of *other* libraries this one obeys too: set by the user,
        they pin it as well (torch's intra-op pool follows OMP_NUM_THREADS).
    idle_vars : tuple of str
        Variables the library reads, when it is loaded, for how long its idle
        threads busy-wait before they sleep; budgeted writes the first one
        (:func:`idle_env`) unless the user set any of them.
    idle_value : str
        What budgeted writes there.
    """

    name: str
    env_vars: tuple[str, ...] = ()
    internal_api: str | None = None
    python_module: str | None = None
    per_thread: bool = False
    also_reads: tuple[str, ...] = ()
    idle_vars: tuple[str, ...] = ()
    idle_value: str = ""


#: Every thread library budgets know about.
THREAD_LIBRARIES: tuple[ThreadLibrary, ...] = (
    ThreadLibrary("openmp", ("OMP_NUM_THREADS",), "openmp", per_thread=True),
    # OpenBLAS's threads spin 2**28 cycles (0.1 s) after each call, holding a
    # CPU no budget or token counts; 2**20 cycles (0.4 ms at 2.5 GHz) costs
    # nothing measurable on back-to-back 50x50 to 1500x1500 products.
    ThreadLibrary(
        "openblas",
        ("OPENBLAS_NUM_THREADS",),
        "openblas",
        idle_vars=("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT"),
        idle_value="20",
    ),
    ThreadLibrary("mkl", ("MKL_NUM_THREADS",), "mkl"),
    ThreadLibrary("blis", ("BLIS_NUM_THREADS",), "blis"),
    ThreadLibrary("flexiblas", ("FLEXIBLAS_NUM_THREADS",), "flexiblas"),
    ThreadLibrary("accelerate", ("VECLIB_MAXIMUM_THREADS",)),
    ThreadLibrary("numexpr", ("NUMEXPR_NUM_THREADS",), python_module="numexpr"),
    ThreadLibrary("numba", ("NUMBA_NUM_THREADS",)),
    ThreadLibrary("polars", ("POLARS_MAX_THREADS",)),
    ThreadLibrary(
        "torch",
        python_module="torch",
        also_reads=("OMP_NUM_THREADS", "MKL_NUM_THREADS"),
    ),
)

#: Lists the variables budgeted wrote, so a nested call in a worker does not
#: mistake them for the user's own.
INJECTED_VARS_MARKER = "BUDGETED_THREAD_VARS"


#: Every variable a thread library reads.
_THREAD_VARS = frozenset(var for lib in THREAD_LIBRARIES for var in lib.env_vars)

#: The thread variables of ``os.environ`` when budgeted was first imported
#: (``None``: not set), to tell the user's pins from Dask's (read only).
_ENV_AT_IMPORT: dict[str, str | None] = {
    var: os.environ.get(var) for var in sorted(_THREAD_VARS)
}

_DASK_PRE_SPAWN_KEY = "distributed.nanny.pre-spawn-environ"


def pinned_libraries(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names of the libraries whose thread variable the user set explicitly.

    A pinned library keeps the user's value: budgets neither override its
    variable nor limit it at run time. A variable set to something that is not
    a positive integer is ignored with a warning, and the library budgeted.
    Variables budgeted wrote (listed in ``BUDGETED_THREAD_VARS``) are not
    the user's, and neither, in ``os.environ``, are those Dask wrote (see
    :func:`_written_by_dask`).

    Parameters
    ----------
    environ : mapping, optional
        The environment to read (default: ``os.environ``).

    Returns
    -------
    frozenset of str
    """
    dask_wrote = _written_by_dask(os.environ) if environ is None else frozenset()
    environ = os.environ if environ is None else environ
    ours = set(environ.get(INJECTED_VARS_MARKER, "").split(",")) | dask_wrote
    user_set = {
        var
        for var in sorted(_THREAD_VARS)
        if var in environ and var not in ours and _is_positive_int(environ[var], var)
    }
    return frozenset(
        lib.name
        for lib in THREAD_LIBRARIES
        if user_set.intersection(lib.env_vars + lib.also_reads)
    )


def _written_by_dask(environ: Mapping[str, str]) -> frozenset[str]:
    """Thread variables of this process that Dask wrote, not the user.

    A Dask nanny started in this process (a ``LocalCluster`` with processes)
    writes ``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1``...)
    into ``os.environ``, where it stays. A variable is Dask's when Dask is
    imported, it holds Dask's configured value, and it did not hold that
    value when budgeted was imported. Dask never overwrites a variable that
    is set, so a pin set before the import is always kept. Dask is never
    imported here.
    """
    config = getattr(sys.modules.get("dask"), "config", None)
    if config is None:
        return frozenset()
    pre_spawn = config.get(_DASK_PRE_SPAWN_KEY, None)
    if not isinstance(pre_spawn, Mapping):
        return frozenset()
    return frozenset(
        var
        for var, value in pre_spawn.items()
        if var in _THREAD_VARS
        and value is not None
        and environ.get(var) == str(value) != _ENV_AT_IMPORT[var]
    )


def _is_positive_int(raw: str, var: str) -> bool:
    try:
        if int(raw) >= 1:
            return True
    except ValueError:
        pass
    warnings.warn(
        f"Ignoring {var}={raw!r}: not a positive integer; the thread budget "
        "is used for it instead.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def budget_env(n_threads: int, pinned: frozenset[str] = frozenset()) -> dict[str, str]:
    """Environment variables that limit every unpinned library to ``n_threads``.

    ``LOKY_MAX_CPU_COUNT`` is included, so loky and joblib code running under
    the budget (``n_jobs=-1``, ``loky.cpu_count()``) plans for it too, and
    ``BUDGETED_THREAD_VARS`` names them all as budgeted's own.

    Parameters
    ----------
    n_threads : int
        The budget.
    pinned : frozenset of str
        Libraries left alone (see :func:`pinned_libraries`).

    Returns
    -------
    dict of str to str
    """
    env = {
        var: str(n_threads)
        for lib in THREAD_LIBRARIES
        if lib.name not in pinned
        for var in lib.env_vars
    }
    env[MAX_CPU_COUNT_VAR] = str(n_threads)
    env[INJECTED_VARS_MARKER] = ",".join(sorted(env))
    return env


def idle_env(
    pinned: frozenset[str] = frozenset(), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Variables that make idle library threads of a new worker sleep soon.

    A thread that busy-waits after its library's call ends runs on a CPU
    that the batch has already given back (to another batch, or to another
    program through a host-wide token). Pinned libraries, and libraries
    whose idle time the user set in ``environ`` (default ``os.environ``),
    are left alone.

    Parameters
    ----------
    pinned : frozenset of str
        Libraries left alone.
    environ : mapping, optional
        Where the user's settings are read.

    Returns
    -------
    dict of str to str
    """
    environ = os.environ if environ is None else environ
    return {
        lib.idle_vars[0]: lib.idle_value
        for lib in THREAD_LIBRARIES
        if lib.idle_vars
        and lib.name not in pinned
        and not any(var in environ for var in lib.idle_vars)
    }


_TBB_IPC_VARS = ("ENABLE_IPC", "IPC_ENABLE")


def worker_env(n_threads: int, pinned: frozenset[str] = frozenset()) -> dict[str, str]:
    """Environment of a new worker process: :func:`budget_env`,
    :func:`idle_env`, and joblib's TBB switch ``ENABLE_IPC=1`` where the user
    set none.

    oneTBB never reads ``ENABLE_IPC``: its IPC server (``libirml`` of the
    ``tbb4py`` wheel) starts on ``IPC_ENABLE``. That one is *not* set here:
    measured with tbb4py 2022.0.0 (the last release whose ``libirml`` works),
    a worker with ``IPC_ENABLE=1`` aborts at exit and leaves two named
    semaphores in ``/dev/shm`` (see ``tests/test_tbb.py``). A user's own
    values reach the workers unchanged, also reused ones.
    """
    tbb = {name: os.environ[name] for name in _TBB_IPC_VARS if name in os.environ}
    return {
        **budget_env(n_threads, pinned),
        **idle_env(pinned),
        "ENABLE_IPC": "1",
        **tbb,
    }


def set_env(
    environ: MutableMapping[str, str] | None, values: Mapping[str, str | None]
) -> dict[str, str | None]:
    """Write ``values`` (``None`` deletes); return what the changed ones replaced.

    Variables that already hold their value are not written (``putenv`` is
    the main cost of a batch of tiny tasks), so restoring the returned dict
    touches only what changed.
    """
    if environ is None:
        return {}
    saved = {}
    for var, value in values.items():
        old = environ.get(var)
        if old == value:
            continue
        saved[var] = old
        if value is None:
            environ.pop(var, None)
        else:
            environ[var] = value
    return saved
