"""Every private joblib name budgeted relies on, in one place.

joblib special-cases ``isinstance(backend, LokyBackend)`` (per-call memmap
folders, executor reuse), so the process backend subclasses it. If a joblib
release moves any of these names, this module is the only one to change, and
``tests/test_compat.py`` fails loudly.
"""

from __future__ import annotations

from joblib._memmapping_reducer import (  # noqa: F401
    ArrayMemmapForwardReducer,
    TemporaryResourcesManager,
    _get_backing_memmap,
    get_memmapping_reducers,
)
from joblib._parallel_backends import (  # noqa: F401
    AutoBatchingMixin,
    FallbackToBackend,
    LokyBackend,
    SequentialBackend,
    ThreadingBackend,
)
from joblib.disk import delete_folder  # noqa: F401
from joblib.executor import MemmappingExecutor  # noqa: F401
from joblib.externals.loky import (  # noqa: F401
    ProcessPoolExecutor as LokyProcessPoolExecutor,
)
from joblib.externals.loky import reusable_executor as _reusable_executor
from joblib.externals.loky.backend import resource_tracker  # noqa: F401
from joblib.externals.loky.backend.context import ctx_loky as _ctx_loky
from joblib.externals.loky.backend.context import (  # noqa: F401
    get_context as loky_get_context,
)
from joblib.externals.loky.process_executor import (  # noqa: F401
    TerminatedWorkerError,
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


def current_loky_executor():
    """loky's reusable executor (the one joblib's loky backend shares), or None."""
    return _reusable_executor._executor


def loky_context():
    """joblib's own (vendored) loky start context.

    ``multiprocessing.get_context("loky")`` returns whichever loky registered
    last: once the standalone ``loky`` package is imported after joblib, it
    is *its* context, whose workers attach to the standalone resource tracker
    while joblib's memmap code in them uses joblib's, so every file is
    reported leaked. Passing this context explicitly keeps both sides on
    joblib's loky.
    """
    return _ctx_loky
