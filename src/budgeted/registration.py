"""Registering budgeted's backends with joblib."""

from __future__ import annotations

from joblib import register_parallel_backend

from .backend import BudgetedBackend

__all__ = ["BACKEND_NAME", "register"]

BACKEND_NAME = "budgeted"


def register() -> None:
    """Register the joblib backend ``"budgeted"`` (idempotent).

    Importing :mod:`budgeted` already does this, in the parent and in every
    worker process that unpickles a budgeted task.
    """
    register_parallel_backend(BACKEND_NAME, BudgetedBackend)
