"""Fails loudly if joblib moves a private name budgeted relies on.

budgeted reaches joblib's (and its vendored loky's) private names only
through :mod:`budgeted._compat` (``tests/test_layout.py`` checks that). Here
each of them is checked, imported names and attributes alike, so that a joblib
release renaming one fails in the test named after it:

* modules and names: ``joblib._memmapping_reducer`` (``_get_backing_memmap``
  ...), ``joblib._parallel_backends``, ``joblib._dask``, ``joblib.disk``,
  ``joblib.executor``, ``joblib.parallel._backend`` and ``_Sentinel``, loky's
  ``reusable_executor._executor`` and ``ctx_loky``;
* attributes: ``MemmappingExecutor._temp_folder_manager``;
  ``TemporaryResourcesManager._temp_folder_root``, ``_id``,
  ``_current_context_id``, ``_finalizers``, ``_clean_temporary_resources``;
  ``ArrayMemmapForwardReducer._max_nbytes``; ``Parallel._id``; the
  ``_workers`` and ``parallel`` that ``LokyBackend.terminate`` and
  ``Parallel`` read on the backend;
  ``DaskDistributedBackend._to_func_args``, ``_results``, ``_callbacks``.

Every one of them also exists in joblib 1.5.0, the lowest release
``pyproject.toml`` allows (checked in its wheel's source).
"""

import inspect
import types

import joblib
import numpy as np
import pytest

from budgeted import _compat


def test_every_name_compat_exports_exists():
    for name in _compat.__all__:
        assert getattr(_compat, name) is not None, name
    assert issubclass(_compat.LokyBackend, joblib.parallel.ParallelBackendBase)
    assert _compat.loky_context() is not None
    _compat.current_loky_executor()  # loky's reusable_executor._executor


def test_configured_n_jobs_reads_parallel_config():
    assert _compat.configured_n_jobs() is None
    with joblib.parallel_config(n_jobs=3):
        assert _compat.configured_n_jobs() == 3


def test_parallel_still_special_cases_loky_subclasses():
    """Per-call memmap folders depend on isinstance(backend, LokyBackend), and
    Parallel switches them through the backend's ``_workers``."""
    source = inspect.getsource(joblib.Parallel)
    assert "isinstance(self._backend, LokyBackend)" in source
    assert "self._backend._workers._temp_folder_manager.set_current_context(" in (
        source
    )


def test_context_id_of_a_parallel_call():
    parallel = joblib.Parallel(n_jobs=2)
    assert _compat.context_id_of(parallel) == parallel._id
    assert isinstance(parallel._id, str)


class _Recording(_compat.ResourcesManagerBase):
    """No folder per call (as budgeted.memmap's), cleanups recorded."""

    def __init__(self, temp_folder_root=None) -> None:
        self.cleaned: list[tuple] = []
        super().__init__(temp_folder_root)

    def register_new_context(self, context_id) -> None:
        pass

    def clean_temporary_resources(
        self, context_id=None, force=False, allow_non_empty=False
    ) -> None:
        self.cleaned.append((context_id, force, allow_non_empty))


def test_resources_manager_private_state(tmp_path):
    manager = _Recording(tmp_path)
    assert manager._temp_folder_root == manager.root == tmp_path
    manager.root = None
    assert manager._temp_folder_root is None
    assert manager.manager_id == manager._id and len(manager._id) == 32
    manager.set_current_context("call")  # what joblib's Parallel calls
    assert manager._current_context_id == manager.current_context_id == "call"
    folder = tmp_path / "folder"
    folder.mkdir()
    manager.register_folder_finalizer(str(folder), "key")
    try:
        assert "key" in manager._finalizers
        manager.cancel_folder_finalizer("key")
        assert "key" not in manager._finalizers
    finally:
        _compat.resource_tracker.unregister(str(folder), "folder")


def test_joblib_cleans_through_the_public_hook():
    """joblib calls ``_clean_temporary_resources``: the hook runs instead."""
    manager = _Recording()
    manager._clean_temporary_resources(context_id="call", force=True)
    assert manager.cleaned == [("call", True, False)]
    terminate = inspect.getsource(_compat.MemmappingExecutor.terminate)
    assert "self._temp_folder_manager._clean_temporary_resources(" in terminate


def test_loky_backend_terminate_cleans_the_calls_folders():
    """``LokyBackend.terminate`` cleans through the backend's ``_workers``."""
    manager = _Recording()
    executor = types.SimpleNamespace()
    _compat.set_memmap_folder_manager(executor, manager)
    assert executor._temp_folder_manager is manager
    assert _compat.memmap_folder_manager(executor) is manager
    parallel = joblib.Parallel(n_jobs=2)
    backend = _compat.LokyBackend()
    backend._workers, backend.parallel = executor, parallel
    backend.terminate()
    assert manager.cleaned == [(_compat.context_id_of(parallel), False, False)]
    assert backend._workers is None


def test_memmapping_executor_has_a_folder_manager(tmp_path):
    executor = _compat.MemmappingExecutor.get_memmapping_executor(
        2, temp_folder=str(tmp_path)
    )
    manager = _compat.memmap_folder_manager(executor)
    assert manager is executor._temp_folder_manager
    assert isinstance(manager, _compat.TemporaryResourcesManager)
    assert _compat.memmap_folder_manager(object()) is None


def test_array_reducer_max_nbytes(tmp_path):
    job_reducers, _ = _compat.get_memmapping_reducers(
        unlink_on_gc_collect=True,
        temp_folder_resolver=lambda: str(tmp_path),
        max_nbytes=1000,
        mmap_mode="r",
    )
    reducers = {
        id(r): r
        for r in job_reducers.values()
        if isinstance(r, _compat.ArrayMemmapForwardReducer)
    }
    assert reducers  # budgeted.memmap wraps exactly these
    for reducer in reducers.values():
        assert reducer._max_nbytes == _compat.reducer_max_nbytes(reducer) == 1000


def test_job_pickler_pickles_as_the_call_queue_does(tmp_path):
    """A large array goes as a memory-mapped file, as in loky's call queue."""
    executor = _compat.MemmappingExecutor.get_memmapping_executor(
        2, temp_folder=str(tmp_path), max_nbytes=1000, context_id="compat-test"
    )
    assert executor._call_queue._reducers is not None
    payload = _compat.job_pickler(executor)(np.arange(1000.0))
    assert isinstance(payload, bytes) and len(payload) < 8000 / 2
    dumped = list(tmp_path.rglob("*.pkl"))
    assert len(dumped) == 1 and dumped[0].stat().st_size > 8000
    _compat.resource_tracker.unregister(str(dumped[0]), "file")  # no worker will
    assert _compat.UNSERIALIZE_MESSAGE.startswith("A task has failed to un-serialize")


def test_get_backing_memmap(tmp_path):
    mapped = np.memmap(tmp_path / "a", dtype=np.float64, mode="w+", shape=(4,))
    assert _compat.get_backing_memmap(mapped[1:]) is mapped
    assert _compat.get_backing_memmap(np.zeros(4)) is None


def test_memstr_to_bytes():
    assert _compat.memstr_to_bytes("1K") == 1024


def test_dask_backend_private_parts():
    distributed = pytest.importorskip("distributed")
    from joblib._dask import DaskDistributedBackend

    from budgeted._compat.dask_backend import DaskBackendBase

    assert inspect.iscoroutinefunction(DaskDistributedBackend._to_func_args)
    assert "await self._to_func_args(func)" in inspect.getsource(DaskDistributedBackend)
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:
        backend = DaskBackendBase(client=client)
        assert isinstance(backend._results, dict)
        assert isinstance(backend._callbacks, dict)
        backend._results["future"] = "result"
        backend._callbacks["future"] = "callback"
        assert backend.drop_pending_futures() == ["future"]
        assert backend._results == backend._callbacks == {}
