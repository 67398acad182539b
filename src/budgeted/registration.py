"""Registering budgeted's backends with joblib.

Every factory registered here can be called with no arguments and without
side effects, because code such as joblib's own test module builds every
registered backend (``[BACKENDS[name]() for name in BACKENDS]``). What a
backend needs (a Dask ``Client``, Dask itself) is checked when it is *used*.
"""

from __future__ import annotations

from joblib import ParallelBackendBase, register_parallel_backend

from .backend import BudgetedBackend

__all__ = ["BACKEND_NAME", "DASK_BACKEND_NAME", "register"]

BACKEND_NAME = "budgeted"
#: Written again as ``budgeted.distributed.BACKEND_NAME``: this module imports
#: that one (lazily, in the factory joblib calls), so it cannot import this
#: name back without an import circle. tests/test_layout.py checks they agree.
DASK_BACKEND_NAME = "budgeted-dask"


def register() -> None:
    """Register the joblib backends ``"budgeted"`` and ``"budgeted-dask"``.

    Idempotent; ``"budgeted-dask"`` imports Dask only when it is created.

    Importing :mod:`budgeted` already does this, in the parent and in every
    worker process that unpickles a budgeted task.
    """
    register_parallel_backend(BACKEND_NAME, BudgetedBackend)
    register_parallel_backend(DASK_BACKEND_NAME, _dask_backend)


def _dask_backend(**kwargs) -> ParallelBackendBase:
    """Factory of ``"budgeted-dask"``: imports Dask only when called.

    Without Dask distributed it returns a stand-in that raises the
    ``ImportError`` (naming ``budgeted[dask]``) when it is used.
    """
    try:
        from .distributed import BudgetedDaskBackend
    except ImportError as exc:
        return _DaskMissing(exc, **kwargs)
    return BudgetedDaskBackend(**kwargs)


class _DaskMissing(ParallelBackendBase):
    """``"budgeted-dask"`` where Dask distributed cannot be imported.

    Created like any backend; using it raises the ``ImportError``.
    """

    supports_inner_max_num_threads = True

    def __init__(
        self,
        error: ImportError,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads
        )
        self._error = error

    def effective_n_jobs(self, n_jobs) -> int:
        """Raise the ``ImportError``: the backend cannot run anything."""
        raise ImportError(str(self._error)) from self._error

    def configure(self, n_jobs=1, parallel=None, **backend_args) -> int:
        """Raise the ``ImportError``: the backend cannot run anything."""
        raise ImportError(str(self._error)) from self._error
