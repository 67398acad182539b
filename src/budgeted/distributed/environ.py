"""What a worker's environment says: its host's CPUs and the user's pins.

A worker's ``os.environ`` (or the one a nanny is about to give it) mixes the
user's variables with budgeted's own (a budget written earlier) and Dask's
nanny defaults (``OMP_NUM_THREADS=1`` and the like); only the user's count.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..cpus import usable_cpus
from ..threadenv import INJECTED_VARS_MARKER, pinned_libraries

__all__ = ["host_cpus", "user_environ", "user_pins"]


def user_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables budgeted itself wrote."""
    ours = set(environ.get(INJECTED_VARS_MARKER, "").split(",")) - {""}
    ours.add(INJECTED_VARS_MARKER)
    return {k: v for k, v in environ.items() if k not in ours}


def host_cpus(n_cpus: int | None, environ: Mapping[str, str]) -> int:
    """CPUs of this host: ``n_cpus`` if given, else measured here."""
    return n_cpus if n_cpus is not None else usable_cpus(environ=user_environ(environ))


def user_pins(environ: Mapping[str, str]) -> frozenset[str]:
    """Libraries the user pinned, ignoring Dask's own nanny defaults.

    A nanny writes ``distributed.nanny.pre-spawn-environ`` (by default
    ``OMP_NUM_THREADS=1`` and the like) into every worker's environment; a
    variable still holding that default is Dask's, not the user's.
    """
    import dask

    defaults = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    kept = {k: v for k, v in environ.items() if str(defaults.get(k)) != v}
    return pinned_libraries(kept)
