"""The parallelism configuration of this process: set once, applied, read.

:func:`initialize` resolves LensKit's four knobs (argument, else ``LK_NUM_*``
variable, else a default from the usable CPUs: see
:mod:`budgeted.lenskit.knobs`) and applies them to this process's thread
pools. The configuration is global and set once: a second :func:`initialize`
warns and changes nothing.

Signatures and errors follow LensKit 2025.1.1's ``lenskit.parallel.config``
(see ``docs/lenskit.rst``, "Compatibility with lenskit.parallel").
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from ..cpus import usable_cpus
from ..threadenv import limit_pools, pinned_libraries
from .knobs import (
    ENV_VARS,
    ArgumentTypeError,
    ParallelConfig,
    config_from_object,
    resolve_config,
)

__all__ = [
    "ENV_VARS",
    "ArgumentTypeError",
    "ParallelConfig",
    "child_threads_for",
    "ensure_parallel_init",
    "get_parallel_config",
    "initialize",
]

_log = logging.getLogger(__name__)

_config: ParallelConfig | None = None
#: Whether ``child_threads`` was given (argument or variable), not derived.
_child_threads_given = False


def initialize(
    config: ParallelConfig | None = None,
    *,
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
    to ``threads`` when torch is imported. LensKit's signature: the knobs
    are keyword-only.

    Parameters
    ----------
    config : ParallelConfig, optional
        A complete configuration, used as is (the knobs are then ignored, as
        in LensKit). Any object with the four attributes is accepted, such as
        LensKit's own ``ParallelConfig``.
    processes, threads, backend_threads, child_threads : int, optional
        Override the environment variable and the default of each knob (see
        the module documentation).

    Returns
    -------
    ParallelConfig
        The configuration in force (the earlier one if already initialized);
        LensKit returns None.

    Raises
    ------
    ValueError
        If a knob or an environment variable is not a positive integer; the
        message names it. A variable that ``int()`` cannot read gives
        ``int()``'s message first, as in LensKit. Nothing is changed then.
    ArgumentTypeError
        (a :class:`TypeError` and a :class:`ValueError`) If a knob is not an
        integer.
    AttributeError
        If ``config`` lacks a knob (LensKit's error for a non-configuration).
    """
    global _config, _child_threads_given
    if _config is not None:
        warnings.warn(
            f"parallelism already initialized ({_config}); this call to "
            "budgeted.lenskit.initialize changes nothing",
            RuntimeWarning,
            stacklevel=2,
        )
        return _config
    if config is None:
        resolved = resolve_config(
            processes, threads, backend_threads, child_threads, ncpu=usable_cpus()
        )
        given = child_threads is not None or bool(
            os.environ.get(ENV_VARS["child_threads"])
        )
    else:
        resolved, given = config_from_object(config), True
    apply_config(resolved.backend_threads, resolved.threads)
    _config, _child_threads_given = resolved, given
    _log.debug("parallelism configured: %s", resolved)
    return resolved


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


def apply_config(backend_threads: int, threads: int) -> None:
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


def replace_config(config: ParallelConfig | None) -> None:
    """Replace the global configuration without applying it (tests, workers)."""
    global _config, _child_threads_given
    _config = config
    _child_threads_given = config is not None
