"""joblib's memmapping executor, with the folder chosen per array, and cleanup.

joblib's loky backend builds a ``MemmappingExecutor`` whose reducers dump
large arrays into a folder picked once per call (``_get_temp_dir``, a fixed
2 GB test on ``/dev/shm``, the folder created eagerly with the umask's mode).
Here the same executor is built with two changes::

    feeder thread pickling a task
      └─ _ChoosingReducer(array)             (ours)
           folder = manager.folder_for(array.nbytes)   choose_temp_folder():
             created on first use, 0700,               temp_folder > env >
             registered with loky's resource tracker   /dev/shm if room > tmp
           └─ joblib's ArrayMemmapForwardReducer: dumps into that folder

    _FolderManager (a joblib TemporaryResourcesManager, see budgeted._compat)
      keeps every folder of each Parallel call (one per root used), and removes
      them all when the call ends or is aborted; folders that were never
      created are never registered, so the resource tracker has nothing to
      report (joblib #1620).

A dump and a cleanup never overlap (one lock), and once the executor is
terminated its manager dumps nothing more. loky does not join its feeder
thread when the executor is killed (an abandoned ``return_as="generator"``
call): the thread goes on pickling the tasks it had buffered, and would
otherwise write files into, or recreate, the folder just removed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from numbers import Real

from . import _compat
from .lifeline import lifeline_initializer
from .tempdir import choose_temp_folder, make_private_folder

__all__ = ["check_memmap_options", "get_memmapping_executor", "start_call_executor"]

_executor_args: dict | None = None


#: ``mmap_mode`` values joblib accepts.
MMAP_MODES = (None, "r", "r+", "w+", "c")


def check_memmap_options(max_nbytes: object, mmap_mode: object) -> None:
    """Raise a clear error for a ``max_nbytes`` or ``mmap_mode`` joblib cannot use.

    What joblib accepts is accepted: any real number for ``max_nbytes``
    (negative: every array is memory-mapped), size strings parsed by joblib
    (its own error for ``"1Q"``). joblib's loky backend takes a list or a
    bad ``mmap_mode`` too, and fails only once an array is dumped (a
    ``PicklingError`` or ``BrokenProcessPool`` naming neither): those are
    refused here, before any task runs.

    Parameters
    ----------
    max_nbytes : int, float, str or None
        Arrays above this size are memory-mapped (``Parallel`` has already
        turned strings such as ``"1M"`` into ints).
    mmap_mode : {None, "r", "r+", "w+", "c"}
        How workers map them.

    Raises
    ------
    TypeError, ValueError
    """
    if isinstance(max_nbytes, str):
        max_nbytes = _compat.memstr_to_bytes(max_nbytes)  # joblib's error: "1Q"
    if max_nbytes is not None and not isinstance(max_nbytes, Real):
        msg = "max_nbytes must be a number of bytes, a size like '1M' or None, got "
        raise TypeError(msg + repr(max_nbytes))
    if mmap_mode not in MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of {MMAP_MODES}, got {mmap_mode!r}")


class _FolderManager(_compat.ResourcesManagerBase):
    """joblib's temporary-resources manager, with folders chosen per array.

    Parameters
    ----------
    temp_folder_root : path-like, optional
        An explicit ``temp_folder`` (else the environment, /dev/shm, tmp).
    """

    def __init__(self, temp_folder_root=None) -> None:
        self._folders: dict[str, dict[str, str]] = {}
        self._local = threading.local()
        self._folders_lock = threading.RLock()  # held through each dump
        self._executor_gone = False
        super().__init__(temp_folder_root)

    def register_new_context(self, context_id) -> None:
        """Note a new ``Parallel`` call; its folders are made when first used."""
        with self._folders_lock:
            self._folders.setdefault(context_id, {})

    def resolve_temp_folder_name(self) -> str:
        """The folder for the array being dumped now (joblib's reducers ask)."""
        folder = getattr(self._local, "folder", None)
        return folder if folder is not None else self.folder_for(0)

    @contextlib.contextmanager
    def dumping(self, nbytes: int) -> Iterator[str]:
        """Within the block, joblib's reducer dumps into the folder for ``nbytes``.

        The block holds the lock cleanups take, so a file is either listed
        (and released) by a cleanup or written after it into a live folder.
        """
        with self._folders_lock:
            self._local.folder = self.folder_for(nbytes)
            try:
                yield self._local.folder
            finally:
                self._local.folder = None

    def folder_for(self, nbytes: int) -> str:
        """This call's folder for an array of ``nbytes`` (created if needed).

        Raises
        ------
        RuntimeError
            The executor was terminated: its calls are over and their folders
            removed (loky's feeder thread then drops the task quietly).
        """
        if self._executor_gone:
            raise RuntimeError(
                "the executor was terminated: its memmap folders are removed"
            )
        root, _ = choose_temp_folder(self.root, nbytes)
        context_id = self.current_context_id
        name = f"joblib_memmapping_folder_{os.getpid()}_{self.manager_id}_{context_id}"
        with self._folders_lock:
            folders = self._folders.setdefault(context_id, {})
            folder = folders.get(str(root))
            if folder is None:
                folder = str(make_private_folder(root / name))
                folders[str(root)] = folder
                self.register_folder_finalizer(folder, folder)
        return folder

    def clean_temporary_resources(
        self, context_id=None, force: bool = False, allow_non_empty: bool = False
    ) -> None:
        """Remove the folders of ``context_id`` (default: of every call, when
        the executor is terminated: nothing is dumped after that)."""
        with self._folders_lock:
            self._executor_gone |= context_id is None
            contexts = list(self._folders) if context_id is None else [context_id]
            for cid in contexts:
                folders = self._folders.get(cid, {})
                for root, folder in list(folders.items()):
                    if _clean_folder(folder, force, allow_non_empty):
                        del folders[root]
                        self.cancel_folder_finalizer(folder)
                if not folders and cid != self.current_context_id:
                    self._folders.pop(cid, None)


def _clean_folder(folder: str, force: bool, allow_non_empty: bool) -> bool:
    """joblib's cleanup of one folder; True once it is gone and unregistered.

    Without ``force`` the files are released through the resource tracker
    (workers may still map them); with it (workers killed) they are
    unregistered and deleted at once.
    """
    tracker = _compat.resource_tracker
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if force:
                tracker.unregister(path, "file")
            else:
                tracker.maybe_unlink(path, "file")
        try:
            _compat.delete_folder(folder, allow_non_empty=allow_non_empty or force)
        except OSError:
            return False  # still in use: the atexit finalizer removes it
    tracker.unregister(folder, "folder")
    return True


class _ChoosingReducer:
    """Wraps joblib's array reducer: choose the folder for each array dumped."""

    def __init__(self, inner, manager: _FolderManager) -> None:
        self._inner = inner
        self._manager = manager

    def __reduce__(self):
        # Sent to workers with the queues: they only need joblib's part.
        return self._inner.__reduce__()

    def __call__(self, a):
        if not self._dumps(a):
            return self._inner(a)
        with self._manager.dumping(a.nbytes) as folder:
            try:
                return self._inner(a)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"could not memory-map a {a.nbytes}-byte array in {folder!r}"
                    f" ({exc.strerror}); set temp_folder= or JOBLIB_TEMP_FOLDER"
                    " to a folder with more room, or raise max_nbytes",
                ) from exc

    def _dumps(self, a) -> bool:
        """Whether joblib will dump ``a`` to a new file (as its reducer decides)."""
        max_nbytes = _compat.reducer_max_nbytes(self._inner)
        return (
            max_nbytes is not None
            and not a.dtype.hasobject
            and a.nbytes > max_nbytes
            and _compat.get_backing_memmap(a) is None
        )


def _reducers(manager: _FolderManager, backend_args: dict) -> tuple[dict, dict]:
    job_reducers, result_reducers = _compat.get_memmapping_reducers(
        unlink_on_gc_collect=True,
        temp_folder_resolver=manager.resolve_temp_folder_name,
        **backend_args,
    )
    wrapped: dict[int, _ChoosingReducer] = {}
    for kind, reducer in list(job_reducers.items()):
        if isinstance(reducer, _compat.ArrayMemmapForwardReducer):
            key = id(reducer)
            wrapped.setdefault(key, _ChoosingReducer(reducer, manager))
            job_reducers[kind] = wrapped[key]
    return job_reducers, result_reducers


def get_memmapping_executor(
    n_jobs: int,
    timeout: float = 300,
    initializer=None,
    initargs=(),
    env: dict | None = None,
    temp_folder=None,
    context_id=None,
    **backend_args,
):
    """joblib's ``get_memmapping_executor``, with per-array folder choice.

    The loky executor is reused while its arguments are unchanged and it was
    built here (a plain joblib one is replaced).
    """
    global _executor_args
    # Workers must share the parent's resource tracker (they decref the files
    # they map there): start it before any worker is spawned.
    _compat.resource_tracker.ensure_running()
    executor_args = {**backend_args, **(env or {})}
    executor_args.update(timeout=timeout, initializer=initializer, initargs=initargs)
    current = _compat.current_loky_executor()
    ours = isinstance(_compat.memmap_folder_manager(current), _FolderManager)
    reuse = ours and _executor_args == executor_args
    _executor_args = executor_args
    manager = _FolderManager(temp_folder)
    job_reducers, result_reducers = _reducers(manager, backend_args)
    executor, reused = _compat.MemmappingExecutor.get_reusable_executor(
        n_jobs,
        job_reducers=job_reducers,
        result_reducers=result_reducers,
        reuse=reuse,
        context=_compat.loky_context(),
        timeout=timeout,
        initializer=initializer,
        initargs=initargs,
        env=env,
    )
    if not reused:
        _compat.set_memmap_folder_manager(executor, manager)
    manager = _compat.memmap_folder_manager(executor)
    manager.root = temp_folder  # for arrays dumped from now on
    if context_id is not None:
        manager.register_new_context(context_id)
    return executor


def start_call_executor(n_jobs: int, parallel, env: dict[str, str], settings: dict):
    """``LokyBackend.configure``'s executor for one ``Parallel`` call.

    ``settings`` are the backend's and the call's keyword arguments
    (``idle_worker_timeout``, ``initializer``, ``max_nbytes``, ...). Workers
    get ``env`` and die with this process (:mod:`budgeted.lifeline`), even
    when it is SIGKILLed.

    Raises
    ------
    ValueError
        loky's own words for a ``timeout`` setting, then ours.
    """
    settings = dict(settings)
    if "timeout" in settings:  # LokyBackend's own check, word for word
        raise ValueError(
            "The 'timeout' parameter is not supported by the LokyBackend. "
            "Please use the `idle_worker_timeout` parameter instead. "
            "(BudgetedBackend is a LokyBackend; Parallel(timeout=...) is "
            "supported and bounds the wait for each result.)"
        )
    idle_worker_timeout = settings.pop("idle_worker_timeout", None)
    if idle_worker_timeout is None:
        idle_worker_timeout = 300
    initializer, initargs = lifeline_initializer(
        settings.pop("initializer", None), settings.pop("initargs", ())
    )
    return get_memmapping_executor(
        n_jobs,
        timeout=idle_worker_timeout,
        initializer=initializer,
        initargs=initargs,
        env=env,
        context_id=_compat.context_id_of(parallel),
        **settings,
    )
