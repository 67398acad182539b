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
