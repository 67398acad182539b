"""Every private joblib (and vendored loky) name budgeted relies on, in one place.

The rest of budgeted uses only the public names defined here: imports from
joblib's private modules, small functions over private attributes, and base
classes that give joblib's private hooks public names. If a joblib release
moves one of them, this package is the only code to change, and
``tests/test_compat.py`` fails loudly, one assertion per name.

joblib special-cases ``isinstance(backend, LokyBackend)`` (per-call memmap
folders, executor reuse), so the process backend subclasses it.
:mod:`budgeted._compat.dask_backend` holds the base of the Dask backend; it
imports Dask, so only when asked.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable

from joblib._memmapping_reducer import (
    ArrayMemmapForwardReducer,
    TemporaryResourcesManager,
    get_memmapping_reducers,
)
from joblib._memmapping_reducer import _get_backing_memmap as get_backing_memmap
from joblib._parallel_backends import (
    FallbackToBackend,
    LokyBackend,
    SequentialBackend,
)
from joblib.disk import delete_folder, memstr_to_bytes
from joblib.executor import MemmappingExecutor
from joblib.externals.loky import (
    ProcessPoolExecutor as LokyProcessPoolExecutor,
)
from joblib.externals.loky import reusable_executor as _reusable_executor
from joblib.externals.loky.backend import resource_tracker
from joblib.externals.loky.backend.context import ctx_loky as _ctx_loky
from joblib.externals.loky.backend.context import (
    get_context as loky_get_context,
)
from joblib.externals.loky.backend.reduction import dumps as _loky_dumps
from joblib.externals.loky.process_executor import (
    BrokenProcessPool,
    TerminatedWorkerError,
)

__all__ = [
    "ArrayMemmapForwardReducer",
    "BrokenProcessPool",
    "UNSERIALIZE_MESSAGE",
    "FallbackToBackend",
    "LokyBackend",
    "LokyProcessPoolExecutor",
    "MemmappingExecutor",
    "ResourcesManagerBase",
    "SequentialBackend",
    "TerminatedWorkerError",
    "configured_n_jobs",
    "context_id_of",
    "current_loky_executor",
    "delete_folder",
    "get_backing_memmap",
    "get_memmapping_reducers",
    "job_pickler",
    "loky_context",
    "loky_get_context",
    "memmap_folder_manager",
    "memstr_to_bytes",
    "reducer_max_nbytes",
    "resource_tracker",
    "set_memmap_folder_manager",
]


# -- joblib's Parallel and its configuration ---------------------------------
def configured_n_jobs():
    """The ``n_jobs`` given to the active ``parallel_config``, or None.

    ``Parallel`` truncates it with ``int()`` before a backend sees it, so this
    is the only place a float such as ``1.5`` can still be caught.
    """
    from joblib.parallel import _backend, _Sentinel

    value = getattr(_backend, "config", {}).get("n_jobs")
    return None if isinstance(value, _Sentinel) else value


def context_id_of(parallel) -> str:
    """The id of a ``Parallel`` call: its memmap folders are named after it."""
    return parallel._id


# -- loky's executor and joblib's memmapping executor --------------------------
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


#: loky's words when a worker cannot load a task (its ``BrokenProcessPool``).
UNSERIALIZE_MESSAGE = (
    "A task has failed to un-serialize. Please ensure that the arguments of "
    "the function are all picklable."
)


def job_pickler(executor) -> Callable[[object], bytes]:
    """A function pickling objects as ``executor``'s call queue pickles tasks.

    loky's pickler (cloudpickle) with the executor's job reducers: joblib's
    memmapping of large arrays into the call's folder.
    """
    reducers = executor._call_queue._reducers

    def dumps(obj) -> bytes:
        return bytes(_loky_dumps(obj, reducers=reducers))

    return dumps


def memmap_folder_manager(executor):
    """The temporary-resources manager of a memmapping executor, or None.

    joblib's ``Parallel`` and ``LokyBackend.terminate`` reach it through the
    backend's executor to switch and clean a call's memmap folders.
    """
    return getattr(executor, "_temp_folder_manager", None)


def set_memmap_folder_manager(executor, manager) -> None:
    """Give a newly built memmapping executor its temporary-resources manager.

    Only for a new executor: a reused one keeps its manager, which its
    reducers already refer to.
    """
    executor._temp_folder_manager = manager


def reducer_max_nbytes(reducer: ArrayMemmapForwardReducer):
    """Arrays larger than this many bytes are dumped to a file (None: never)."""
    return reducer._max_nbytes


class ResourcesManagerBase(TemporaryResourcesManager):
    """joblib's ``TemporaryResourcesManager``, its private state under public names.

    joblib calls ``_clean_temporary_resources`` when a call ends (the loky
    backend's ``terminate``) and when the executor is terminated; here it
    calls :meth:`clean_temporary_resources`, which subclasses override.

    Parameters
    ----------
    temp_folder_root : path-like, optional
        Where the folders go (joblib's ``temp_folder``).
    """

    @property
    def root(self):
        """The ``temp_folder`` given (None: the environment, /dev/shm, tmp)."""
        return self._temp_folder_root

    @root.setter
    def root(self, temp_folder_root) -> None:
        self._temp_folder_root = temp_folder_root

    @property
    def manager_id(self) -> str:
        """A unique hex id of this manager: part of its folders' names."""
        return self._id

    @property
    def current_context_id(self) -> str:
        """Id of the ``Parallel`` call whose tasks are being pickled now."""
        return self._current_context_id

    def cancel_folder_finalizer(self, key) -> None:
        """Forget the at-exit removal registered under ``key`` (if any).

        ``key`` is the second argument given to ``register_folder_finalizer``.
        """
        finalizer = self._finalizers.pop(key, None)
        if finalizer is not None:
            atexit.unregister(finalizer)

    def clean_temporary_resources(
        self, context_id=None, force: bool = False, allow_non_empty: bool = False
    ) -> None:
        """Remove the folders of ``context_id`` (None: of every call).

        Parameters
        ----------
        context_id : str, optional
            The call (:func:`context_id_of`).
        force : bool, default=False
            The workers were killed: delete the files at once.
        allow_non_empty : bool, default=False
            Delete a folder that still holds files.
        """
        super()._clean_temporary_resources(
            context_id, force=force, allow_non_empty=allow_non_empty
        )

    def _clean_temporary_resources(
        self, context_id=None, force=False, allow_non_empty=False
    ):
        self.clean_temporary_resources(
            context_id, force=force, allow_non_empty=allow_non_empty
        )
