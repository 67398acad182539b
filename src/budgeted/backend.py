"""BudgetedBackend: joblib's loky backend, with a thread budget per task.

Two modes, chosen per call by joblib's own hints:

* **processes** (default): loky workers (spawn-based, reused between calls
  as loky does; never ``fork``). Large arrays are memory-mapped as joblib does.
* **threads** (``prefer="threads"`` or ``require="sharedmem"``): a thread pool
  in the calling process, each thread limited with threadpoolctl.

In both modes every batch runs inside a :class:`~budgeted.apply.BudgetedBatch`
that applies its share of the CPUs (:mod:`budgeted.apply`); thread mode is a
:class:`~budgeted.threads.BudgetedThreadPool`.

The class subclasses joblib's ``LokyBackend`` because ``Parallel``
special-cases it (per-call memmap folders, executor reuse).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator

from . import _compat
from .apply import BudgetedBatch
from .board import Board, InFlight
from .budget import check_n_cpus, effective_n_jobs, joblib_n_jobs
from .failures import explain_failure
from .hostwide import token_spec
from .hostwide.lease import refill_dead_workers
from .memmap import check_memmap_options, start_call_executor
from .plan import Plan
from .sigterm import SigtermGuard
from .tempdir import configured_folder, remove_stale_once
from .threadenv import current_budget, pinned_libraries, worker_env
from .threads import BudgetedThreadPool

__all__ = ["BudgetedBackend"]


class BudgetedBackend(_compat.LokyBackend):
    """A joblib backend that gives every task a share of the usable CPUs.

    Use it through joblib::

        with parallel_config("budgeted", n_jobs=4):
            Parallel()(delayed(f)(x) for x in xs)

    Parameters
    ----------
    n_cpus : int, optional
        CPUs to plan for. Default: the budget in force where the backend is
        configured, i.e. the usable CPUs (:func:`budgeted.usable_cpus`), or
        the enclosing task's budget in a nested call.
    dynamic : bool, default=True
        Work-conserving budgets: a batch splits the CPUs over the batches
        running when it starts, so the tail of a job gets idle CPUs. False
        gives every worker its static share ``split_budget(n_cpus, n_jobs)``.
    prefer : {"processes", "threads"}, optional
        Default mode when the ``Parallel`` call gives no hint. Nested calls
        default to threads, as joblib's own backends do.
    nesting_level : int, optional
        Set by joblib.
    inner_max_num_threads : int, optional
        Give every task this budget instead (``parallel_config`` argument).
    jobserver : bool, default=True
        Take part in a make jobserver named in ``MAKEFLAGS`` (False: as
        ``BUDGETED_JOBSERVER=0``). See :mod:`budgeted.hostwide`.
    ledger : bool, default=True
        Share the host ledger with this user's other programs when no
        jobserver is named (False: as ``BUDGETED_LEDGER=off``).
    **backend_kwargs
        Passed to loky's executor (``idle_worker_timeout`` ...).
    """

    uses_threads = False
    supports_sharedmem = True  # we switch to threads ourselves, keeping budgets
    supports_inner_max_num_threads = True
    supports_retrieve_callback = True
    default_n_jobs = 1

    def __init__(
        self,
        n_cpus: int | None = None,
        dynamic: bool = True,
        prefer: str | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        jobserver: bool = True,
        ledger: bool = True,
        **backend_kwargs,
    ) -> None:
        self._init_kwargs = dict(
            n_cpus=n_cpus,
            dynamic=dynamic,
            prefer=prefer,
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            jobserver=jobserver,
            ledger=ledger,
            **backend_kwargs,
        )
        self.host_tokens = {"jobserver": bool(jobserver), "ledger": bool(ledger)}
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        self.n_cpus = None if n_cpus is None else check_n_cpus(n_cpus)
        self.dynamic = bool(dynamic)
        if prefer not in (None, "processes", "threads"):
            raise ValueError(f"prefer must be 'processes' or 'threads', got {prefer!r}")
        self.prefer = prefer
        self.uses_threads = prefer == "threads"
        self._workers = None
        self._threads: BudgetedThreadPool | None = None
        self._board: Board | None = None
        self._in_flight: InFlight | None = None
        self._plan: Plan | None = None
        self._load_late = 0
        self._sigterm = SigtermGuard()

    def __reduce__(self):
        # Nested backends travel to worker processes: send the settings only.
        return _rebuild_backend, (self._init_kwargs,)

    # -- sizing ------------------------------------------------------------
    def planned_cpus(self) -> int:
        """CPUs this backend shares: ``n_cpus``, else the budget in force."""
        return self.n_cpus if self.n_cpus is not None else current_budget()

    def effective_n_jobs(self, n_jobs) -> int:
        """Resolve ``n_jobs`` as joblib does (``-1``: all planned CPUs)."""
        return effective_n_jobs(joblib_n_jobs(n_jobs), self.planned_cpus())

    # -- lifecycle -----------------------------------------------------------
    def configure(
        self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs
    ) -> int:
        """Choose the mode, plan the budgets and start the workers.

        ``n_jobs`` arrives converted by ``Parallel`` (``int()``, also for
        ``parallel_config``'s value), so bad values fail as under loky.
        """
        check_memmap_options(kwargs.get("max_nbytes"), kwargs.get("mmap_mode", "r"))
        threads = wants_threads(prefer, require, self.prefer)
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if n_jobs == 1:
            raise _compat.FallbackToBackend(
                _compat.SequentialBackend(nesting_level=self.nesting_level)
            )
        planned = self.planned_cpus()
        self._plan = Plan(
            n_cpus=planned,
            n_slots=n_jobs,
            dynamic=self.dynamic,
            fixed=self.inner_max_num_threads,
            pinned=pinned_libraries(),
            processes=not threads,
            tokens=self._token_spec(planned),
        )
        self.uses_threads = threads
        if threads:
            return self._configure_threads(n_jobs)
        return self._configure_processes(n_jobs, parallel, kwargs)

    def _token_spec(self, planned: int):
        """The program's host-wide tokens; none in a nested call (its task
        already holds the CPUs it shares)."""
        if self.nesting_level:
            return None
        return token_spec(planned, **self.host_tokens)

    def _configure_processes(self, n_jobs: int, parallel, kwargs: dict) -> int:
        """Check the memmap folder, clear stale leftovers, start loky's workers."""
        configured_folder(kwargs.get("temp_folder"))  # a bad folder fails here
        remove_stale_once(kwargs.get("temp_folder"))
        self._board = Board.create_file(n_jobs)
        self._in_flight = InFlight(self._board)
        env = worker_env(self._plan.smallest_budget(), self._plan.pinned)
        settings = {**self.backend_kwargs, **kwargs}
        self._workers = start_call_executor(n_jobs, parallel, env, settings)
        self._sigterm.install()
        # With host tokens, a call's first batches (about two a worker: those
        # whose loading imports what its tasks need) travel pickled and are
        # loaded once their worker holds the CPUs; later batches of the call
        # find those modules imported and go as loky sends them.
        self._load_late = 2 * n_jobs if self._plan.tokens is not None else 0
        return n_jobs

    def _configure_threads(self, n_jobs: int) -> int:
        self._threads = BudgetedThreadPool(self._plan)
        self._board, self._in_flight = self._threads.board, self._threads.in_flight
        return n_jobs

    def start_call(self) -> None:
        """A call starts: its first batches are being dispatched."""
        self._in_flight.start_call()

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """The first dispatch is over: publish how many batches are in flight."""
        self._in_flight.dispatched()
        yield

    def stop_call(self) -> None:
        """The call is over: nothing is in flight."""
        self._in_flight.dispatched()

    def submit(self, func, callback=None):
        """Schedule one batch, wrapped to run under its budget."""
        if self._threads is not None:
            future = self._threads.submit(func)
        else:
            self._in_flight.add(+1)
            pickler = None
            if self._load_late > 0:  # see _configure_processes
                self._load_late -= 1
                pickler = _compat.job_pickler(self._workers)
            batch = BudgetedBatch(func, self._plan, self._board, pickler)
            future = self._workers.submit(batch)
            future.add_done_callback(lambda _: self._in_flight.add(-1))
        future.budgeted_batch = func  # to name the tasks if the batch fails
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        """The batch's results; a lost worker or unpicklable task is named."""
        try:
            return super().retrieve_result_callback(future)
        except Exception as exc:
            refill_dead_workers(self._plan.tokens)  # a killed worker's tokens
            clearer = explain_failure(exc, getattr(future, "budgeted_batch", None))
            if clearer is None:
                raise
            raise clearer from exc

    def terminate(self) -> None:
        """End of a call: free the call's resources, keep loky's workers."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        elif self._workers is not None:
            super().terminate()  # removes this call's memmap folders
        if self._plan is not None:
            refill_dead_workers(self._plan.tokens)
        self._close_board()
        self._sigterm.restore()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel pending batches; kill workers in process mode.

        ``ensure_ready`` needs nothing more: joblib configures the backend
        again at the start of every call. Not starting a new pool here keeps
        an interrupted program (SIGINT, SIGTERM) from spawning workers and
        semaphores while it exits.
        """
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self.terminate()
        else:
            self._close_board()
            if self._workers is not None:
                # kill the workers, then remove every memmap folder at once
                self._workers.terminate(kill_workers=True)
                self._workers = None
                refill_dead_workers(self._plan.tokens)

    def _close_board(self) -> None:
        if self._board is not None:
            self._board.close(unlink=True)
            self._board = None

    def get_nested_backend(self):
        """A budgeted backend for calls made inside tasks.

        It plans for the enclosing task's budget (``n_cpus`` left unset, so it
        reads :func:`budgeted.current_budget` in the task) and prefers threads
        like joblib's own nested backends.
        """
        nesting_level = (self.nesting_level or 0) + 1
        return (
            BudgetedBackend(
                dynamic=self.dynamic,
                prefer="threads",
                nesting_level=nesting_level,
                **self.host_tokens,
            ),
            None,
        )


def wants_threads(prefer, require, default_prefer=None) -> bool:
    """Whether a call runs on threads: joblib's hints, then the backend's
    ``prefer``; daemonic processes (Dask workers) cannot have children."""
    if require == "sharedmem" or prefer == "threads":
        return True
    if prefer == "processes":
        return False
    if default_prefer is not None:
        return default_prefer == "threads"
    return multiprocessing.current_process().daemon


def _rebuild_backend(init_kwargs: dict) -> BudgetedBackend:
    return BudgetedBackend(**init_kwargs)
