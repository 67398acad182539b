"""Every private joblib name budgeted relies on, in one place.

joblib special-cases ``isinstance(backend, LokyBackend)`` (per-call memmap
folders, executor reuse), so the process backend subclasses it. If a joblib
release moves any of these names, this module is the only one to change, and
``tests/test_compat.py`` fails loudly.
"""

from __future__ import annotations

from joblib._parallel_backends import (  # noqa: F401
    AutoBatchingMixin,
    FallbackToBackend,
    LokyBackend,
    SequentialBackend,
    ThreadingBackend,
)
from joblib.parallel import BatchedCalls  # noqa: F401


def dask_backend_class():
    """joblib's Dask backend class (imports dask, so only when asked)."""
    from joblib._dask import DaskDistributedBackend

    return DaskDistributedBackend


def configured_n_jobs():
    """The ``n_jobs`` given to the active ``parallel_config``, or None.

    ``Parallel`` truncates it with ``int()`` before a backend sees it, so this
    is the only place a float such as ``1.5`` can still be caught.
    """
    from joblib.parallel import _backend, _Sentinel

    value = getattr(_backend, "config", {}).get("n_jobs")
    return None if isinstance(value, _Sentinel) else value
