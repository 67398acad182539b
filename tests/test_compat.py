"""Fails loudly if joblib moves a private name budgeted relies on."""

import joblib

from budgeted import _compat


def test_private_joblib_names_are_still_there():
    assert issubclass(_compat.LokyBackend, joblib.parallel.ParallelBackendBase)
    for name in ("AutoBatchingMixin", "FallbackToBackend", "SequentialBackend"):
        assert getattr(_compat, name) is not None
    assert callable(_compat.BatchedCalls)
    assert _compat.configured_n_jobs() is None
    with joblib.parallel_config(n_jobs=3):
        assert _compat.configured_n_jobs() == 3


def test_parallel_still_special_cases_loky_subclasses():
    """Per-call memmap folders depend on isinstance(backend, LokyBackend)."""
    import inspect

    assert "isinstance(self._backend, LokyBackend)" in inspect.getsource(
        joblib.Parallel
    )
