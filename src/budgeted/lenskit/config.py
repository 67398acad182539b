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

Signatures and errors follow LensKit 2025.1.1's ``lenskit.parallel.config``
(see ``docs/lenskit.rst``, "Compatibility with lenskit.parallel").
"""

from __future__ import annotations

import logging
import numbers
import os
import sys
import warnings
from collections.abc import Mapping
from typing import NamedTuple

from ..budget import check_positive_int
from ..cpus import usable_cpus
from ..threadenv import limit_pools, pinned_libraries

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


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string or a float for a count).

    A :class:`TypeError`, as LensKit's code raises for such values, and a
    :class:`ValueError`, as budgeted raised before: ``except`` clauses written
    for either keep working.
    """


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

    @property
    def total_threads(self) -> int:
        """Threads of this process: ``threads * backend_threads`` (LensKit's)."""
        return self.threads * self.backend_threads

    def env_vars(self) -> dict[str, str]:
        """This configuration as ``LK_NUM_*`` environment variables (LensKit's).

        Returns
        -------
        dict of str to str
        """
        return {ENV_VARS[name]: str(value) for name, value in self._asdict().items()}


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
        resolved = resolve_config(processes, threads, backend_threads, child_threads)
        given = child_threads is not None or bool(
            os.environ.get(ENV_VARS["child_threads"])
        )
    else:
        resolved, given = config_from_object(config), True
    apply_config(resolved.backend_threads, resolved.threads)
    _config, _child_threads_given = resolved, given
    _log.debug("parallelism configured: %s", resolved)
    return resolved


def config_from_object(config: object) -> ParallelConfig:
    """A validated :class:`ParallelConfig` from any object with the four knobs.

    ``backend_threads`` is read first: LensKit reads it first, so a wrong
    object gives LensKit's ``AttributeError`` message.
    """
    try:
        backend_threads = config.backend_threads  # type: ignore[attr-defined]
        values = {name: getattr(config, name) for name in ENV_VARS}
    except AttributeError as exc:
        raise AttributeError(
            f"{exc}; budgeted.lenskit.initialize's first argument is a "
            "ParallelConfig (the knobs are keyword-only, as in LensKit)"
        ) from None
    values["backend_threads"] = backend_threads
    return ParallelConfig(**{k: _check_knob(k, v) for k, v in values.items()})


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
        Explicit values (positional here: this helper is budgeted's own).
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
        return _check_knob(name, value)
    return _knob_from_env(environ, ENV_VARS[name])


def _check_knob(name: str, value: object) -> int:
    """``value`` if it is an integer >= 1; else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{name} must be a positive integer, got {value!r} ({type(value).__name__})"
        )
    return check_positive_int(name, value)


def _knob_from_env(environ: Mapping[str, str], var: str) -> int | None:
    """The value of ``var`` read as LensKit reads it (``int()``), or None.

    Unset or empty means None, as in LensKit; anything else goes through
    ``int()``, whose ``ValueError`` message comes first, then ours. Values
    LensKit accepts but that are no budget (0, negative) raise too.
    """
    raw = environ.get(var)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; {var} must be a positive integer, got {raw!r}"
        ) from None
    if value < 1:
        raise ValueError(f"{var} must be a positive integer, got {raw!r}")
    return value


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
