"""Registering budgeted's backends with joblib."""

from __future__ import annotations

from joblib import register_parallel_backend

from .backend import BudgetedBackend

__all__ = ["BACKEND_NAME", "DASK_BACKEND_NAME", "register"]

BACKEND_NAME = "budgeted"
DASK_BACKEND_NAME = "budgeted-dask"


def register() -> None:
    """Register the joblib backends ``"budgeted"`` and ``"budgeted-dask"``.

    Idempotent; ``"budgeted-dask"`` imports Dask only when it is used.

    Importing :mod:`budgeted` already does this, in the parent and in every
    worker process that unpickles a budgeted task.
    """
    register_parallel_backend(BACKEND_NAME, BudgetedBackend)
    register_parallel_backend(DASK_BACKEND_NAME, _dask_backend)


def _dask_backend(**kwargs):
    """Factory of ``"budgeted-dask"``: imports dask only when it is used.

    Raises
    ------
    ImportError
        If Dask distributed is not installed (names ``budgeted[dask]``).
    """
    from .distributed import BudgetedDaskBackend

    return BudgetedDaskBackend(**kwargs)
