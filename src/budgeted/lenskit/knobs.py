"""LensKit's four knobs: what they are, how they are read and checked.

Each knob is taken from an argument, else from its environment variable,
else from a default computed from the usable CPUs (affinity mask and cgroup
quota included, :func:`budgeted.usable_cpus`)::

    knob              variable                default
    processes         LK_NUM_PROCS            min(ncpu, 4)
    threads           LK_NUM_THREADS          min(ncpu, 8)
    backend_threads   LK_NUM_BACKEND_THREADS  max(min(ncpu // threads, 4), 1)
    child_threads     LK_NUM_CHILD_THREADS    max(min(ncpu // processes, 4), 1)

Nothing here holds or applies a configuration (that is
:mod:`budgeted.lenskit.config`). The rule is budgeted's own
(:func:`budgeted.budget.check_positive_int`,
:func:`budgeted.budget.positive_int_from_env`); errors keep LensKit 2025.1.1's
type and words first (see ``docs/lenskit.rst``, "Compatibility with
lenskit.parallel").
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import NamedTuple

from ..budget import check_positive_int, positive_int_from_env
from ..cpus import usable_cpus

__all__ = [
    "ENV_VARS",
    "ArgumentTypeError",
    "ParallelConfig",
    "config_from_object",
    "resolve_config",
]

#: The environment variable of each knob.
ENV_VARS: dict[str, str] = {
    "processes": "LK_NUM_PROCS",
    "threads": "LK_NUM_THREADS",
    "backend_threads": "LK_NUM_BACKEND_THREADS",
    "child_threads": "LK_NUM_CHILD_THREADS",
}


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
    """``value`` if it is an integer >= 1; else raise naming ``name``.

    Not an integer at all: an :class:`ArgumentTypeError` (LensKit's code
    raises a ``TypeError`` for it) with the value's type added.
    """
    try:
        return check_positive_int(name, value)
    except ValueError as exc:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            raise  # an integer < 1
        raise ArgumentTypeError(f"{exc} ({type(value).__name__})") from None


def _knob_from_env(environ: Mapping[str, str], var: str) -> int | None:
    """The value of ``var`` read as LensKit reads it (``int()``), or None.

    Unset or empty means None, as in LensKit; anything else goes through
    ``int()``, whose ``ValueError`` message comes first, then ours. Values
    LensKit accepts but that are no budget (0, negative) raise too
    (:func:`budgeted.budget.positive_int_from_env`).
    """
    raw = environ.get(var)
    if not raw:
        return None
    try:
        int(raw)  # LensKit's reading: its words first (a blank raises here too)
    except ValueError as exc:
        ours = f"{var} must be a positive integer, got {raw!r}"
        raise ValueError(f"{exc}; {ours}") from None
    return positive_int_from_env(environ, var)
