"""Process-wide parallelism settings, LensKit's four knobs, resolved once.

Each knob is taken from the argument of :func:`initialize`, else from its
environment variable, else from a default computed from
:func:`budgeted.usable_cpus` (affinity mask and cgroup quota included)::

    knob              variable                default
    processes         LK_NUM_PROCS            min(ncpu, 4)
    threads           LK_NUM_THREADS          min(ncpu, 8)
    backend_threads   LK_NUM_BACKEND_THREADS  max(min(ncpu // threads, 4), 1)
    child_threads     LK_NUM_CHILD_THREADS    max(min(ncpu // processes, 4), 1)

The configuration is global and set once: a second :func:`initialize` warns
and changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from typing import NamedTuple

from ..budget import check_positive_int, positive_int_from_env
from ..cpus import usable_cpus
from ..threadenv import limit_pools, pinned_libraries

__all__ = [
    "ENV_VARS",
    "ParallelConfig",
    "child_threads_for",
    "ensure_parallel_init",
    "get_parallel_config",
    "initialize",
]

_log = logging.getLogger(__name__)

#: The environment variable of each knob.
ENV_VARS: dict[str, str] = {
    "processes": "LK_NUM_PROCS",
    "threads": "LK_NUM_THREADS",
    "backend_threads": "LK_NUM_BACKEND_THREADS",
    "child_threads": "LK_NUM_CHILD_THREADS",
}

_config: ParallelConfig | None = None
#: Whether ``child_threads`` was given (argument or variable), not derived.
_child_threads_given = False


class ParallelConfig(NamedTuple):
    """Parallelism settings of this process.

    Attributes
    ----------
    processes : int
        Worker processes for batch operations (:func:`invoker`).
    threads : int
        Threads for parallel model training (torch inter-op threads).
    backend_threads : int
        Threads of native compute pools (BLAS, OpenMP, torch intra-op) in this
        process.
    child_threads : int
        Threads of native compute pools in each worker process.
    """

    processes: int
    threads: int
    backend_threads: int
    child_threads: int


def initialize(
    processes: int | None = None,
    threads: int | None = None,
    backend_threads: int | None = None,
    child_threads: int | None = None,
) -> ParallelConfig:
    """Resolve the parallelism settings and apply them to this process.

    Only needs calling to choose the settings or when they take effect;
    :func:`invoker` calls :func:`ensure_parallel_init` otherwise. The native
    pools already loaded (OpenMP for the calling thread, BLAS, torch
    intra-op) are limited to ``backend_threads``, and torch's inter-op pool
    to ``threads`` when torch is imported.

    Parameters
    ----------
    processes, threads, backend_threads, child_threads : int, optional
        Override the environment variable and the default of each knob (see
        the module documentation).

    Returns
    -------
    ParallelConfig
        The configuration in force (the earlier one if already initialized).

    Raises
    ------
    ValueError
        If an argument or an environment variable is not a positive integer;
        the message names it. Nothing is changed then.
    """
    global _config, _child_threads_given
    if _config is not None:
        warnings.warn(
            f"budgeted.lenskit parallelism is already initialized ({_config}); "
            "this call changes nothing",
            RuntimeWarning,
            stacklevel=2,
        )
        return _config
    config = resolve_config(processes, threads, backend_threads, child_threads)
    _apply(config.backend_threads, config.threads)
    _config = config
    _child_threads_given = child_threads is not None or bool(
        os.environ.get(ENV_VARS["child_threads"], "").strip()
    )
    _log.debug("parallelism configured: %s", config)
    return config


def ensure_parallel_init() -> None:
    """Initialize with the environment and defaults unless already done."""
    if _config is None:
        initialize()


def get_parallel_config() -> ParallelConfig:
    """Return the configuration in force, initializing it if needed.

    Returns
    -------
    ParallelConfig
    """
    ensure_parallel_init()
    assert _config is not None  # for type checkers: set by initialize
    return _config


def child_threads_for(n_jobs: int) -> int:
    """Native threads for each of ``n_jobs`` worker processes.

    The configured ``child_threads`` when it was given (argument or
    ``LK_NUM_CHILD_THREADS``) or when ``n_jobs`` is the configured number of
    processes; otherwise the default recomputed for ``n_jobs`` processes,
    ``max(min(ncpu // n_jobs, 4), 1)``, so that more workers than configured
    do not multiply the threads beyond the CPUs.

    Parameters
    ----------
    n_jobs : int
        Worker processes (>= 1).

    Returns
    -------
    int
    """
    config = get_parallel_config()
    if _child_threads_given or n_jobs == config.processes:
        return config.child_threads
    return max(min(usable_cpus() // n_jobs, 4), 1)


def resolve_config(
    processes: int | None = None,
    threads: int | None = None,
    backend_threads: int | None = None,
    child_threads: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    ncpu: int | None = None,
) -> ParallelConfig:
    """Resolve each knob: argument, else environment, else default.

    Pure apart from reading ``environ`` and the usable CPUs: nothing is
    applied and the global configuration is not touched.

    Parameters
    ----------
    processes, threads, backend_threads, child_threads : int, optional
        Explicit values.
    environ : mapping, optional
        Environment to read (default: ``os.environ``).
    ncpu : int, optional
        CPUs the defaults are computed from (default:
        :func:`budgeted.usable_cpus`).

    Returns
    -------
    ParallelConfig
    """
    environ = os.environ if environ is None else environ
    given = {
        "processes": processes,
        "threads": threads,
        "backend_threads": backend_threads,
        "child_threads": child_threads,
    }
    values = {name: _knob(name, value, environ) for name, value in given.items()}
    ncpu = usable_cpus() if ncpu is None else check_positive_int("ncpu", ncpu)
    if values["processes"] is None:
        values["processes"] = min(ncpu, 4)
    if values["threads"] is None:
        values["threads"] = min(ncpu, 8)
    if values["backend_threads"] is None:
        values["backend_threads"] = max(min(ncpu // values["threads"], 4), 1)
    if values["child_threads"] is None:
        values["child_threads"] = max(min(ncpu // values["processes"], 4), 1)
    return ParallelConfig(**values)


def _knob(name: str, value: object, environ: Mapping[str, str]) -> int | None:
    """The explicit or environment value of one knob, validated, or None."""
    if value is not None:
        return check_positive_int(name, value)
    return positive_int_from_env(environ, ENV_VARS[name])


def _apply(backend_threads: int, threads: int) -> None:
    """Limit this process's loaded pools; torch's inter-op pool if imported.

    Libraries whose thread variable the user set keep their value.
    """
    limit_pools(backend_threads, pinned_libraries())
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.get_num_interop_threads() != threads:
            torch.set_num_interop_threads(threads)
    except RuntimeError as exc:  # set once, before any inter-op work
        warnings.warn(
            f"could not set torch inter-op threads to {threads}: {exc}",
            RuntimeWarning,
            stacklevel=3,
        )


def _set_config(config: ParallelConfig | None) -> None:
    """Replace the global configuration without applying it (tests, workers)."""
    global _config, _child_threads_given
    _config = config
    _child_threads_given = config is not None
