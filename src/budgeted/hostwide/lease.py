"""The CPUs one running batch holds, taken from the host-wide token source.

Where the worker-side path applies a budget, it first holds CPUs::

    parent (configure)                   worker process or thread (each batch)
    ──────────────────                   ─────────────────────────────────────
    source = tokens_for(n_cpus)          lease = Lease(open_source(spec), board)
    plan.tokens = spec_for(source) ────> lease.start()   waits for 1 CPU: the
      (pipe jobserver: workers reach       program's implicit token (jobserver
       it as /proc/<parent>/fd/R)          only; one per program, on the board)
                                           or one token (sleeping, never spinning)
                                         budget = lease.fit(plan budget)
                                           more tokens if free now, never waiting
                                         ... the batch runs; the rebalancer
                                           calls lease.fit() as the job drains
                                         lease.end(): every token given back

A worker process opens the source itself from the spec (a ledger's folder, a
jobserver's fifo), so what it holds is given back by the kernel (ledger) or
by the parent from the worker's holdings record (jobserver) when it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..leftovers import HOLDERS
from .jobserver import JobserverClient
from .ledger import HostLedger
from .makeflags import JobserverAuth
from .source import TokenSource

__all__ = [
    "Lease",
    "ProgramShare",
    "TokenSpec",
    "holding",
    "leased",
    "open_source",
    "spec_for",
]

#: Longest sleep (seconds) of a batch waiting for its program's implicit token
#: while the source itself cannot be waited on (``make -j1``).
IMPLICIT_POLL = 0.02
#: How long one wait on the source lasts before the implicit token is looked
#: at again (seconds).
WAIT_STEP = 0.05
#: The same under ``budgeted run``, whose implicit CPU another program may
#: give back at any moment (a lock, not a byte in the fifo).
LOOK = 0.01
#: After a top-up found fewer tokens free than asked, how long before the
#: next attempt (the rebalancer asks every few ms; a full ledger is a scan).
TOP_UP_BACKOFF = 0.05


@dataclass(frozen=True)
class TokenSpec:
    """How a worker process reaches its program's token source.

    Attributes
    ----------
    kind : {"ledger", "jobserver"}
    n_tokens : int
        Ledger: its size (the program's planned CPUs).
    folder : str or None
        Ledger: its folder.
    auth : JobserverAuth or None
        Jobserver: a fifo path (a pipe jobserver is reached through
        ``/proc/<parent pid>/fd/<read fd>``).
    holders : str or None
        Jobserver: where workers record the bytes they hold, so the parent
        can write back those of a worker that died.
    program : int
        The program's PID: its workers do not queue behind each other in
        the queue of waiters (a ledger's, or a ``budgeted run`` server's).
    """

    kind: str
    n_tokens: int = 0
    folder: str | None = None
    auth: JobserverAuth | None = None
    holders: str | None = None
    program: int = 0

    @property
    def implicit(self) -> bool:
        """Whether the program owns an implicit token (make's protocol)."""
        return self.kind == "jobserver"


_opened: dict[TokenSpec, TokenSource] = {}
_opened_lock = threading.Lock()
_holders: dict[int, Path] = {}


def spec_for(source: TokenSource) -> TokenSpec:
    """The spec of this program's ``source``, for its batches and workers."""
    pid = os.getpid()
    if isinstance(source, HostLedger):
        spec = TokenSpec(
            "ledger", source.n_tokens, str(source.folder), program=source.program
        )
    else:
        auth = source.auth
        path = auth.path
        if auth.style == "pipe":
            path = f"/proc/{pid}/fd/{auth.read_fd}"
        worker_auth = JobserverAuth(auth.variable, "fifo", path=path, jobs=auth.jobs)
        holders = str(_holders_folder())
        spec = TokenSpec(
            "jobserver", auth=worker_auth, holders=holders, program=source.program
        )
    with _opened_lock:
        _opened[spec] = source
    return spec


def _holders_folder() -> Path:
    """This program's private folder of its workers' holdings records."""
    pid = os.getpid()
    if pid not in _holders:
        folder = Path(tempfile.mkdtemp(prefix=f"{HOLDERS.prefix}{pid}-"))
        _holders[pid] = folder
        atexit.register(shutil.rmtree, folder, True)
    return _holders[pid]


def open_source(spec: TokenSpec) -> TokenSource:
    """The source ``spec`` names, opened once per process."""
    with _opened_lock:
        source = _opened.get(spec)
        if source is None or source.pid != os.getpid():
            source = _open(spec)
            _opened[spec] = source
        return source


def _open(spec: TokenSpec) -> TokenSource:
    if spec.kind == "ledger":
        return HostLedger(spec.n_tokens, spec.folder, program=spec.program)
    holders = None if spec.holders is None else Path(spec.holders)
    return JobserverClient(spec.auth, holders=holders, program=spec.program)


def refill_dead_workers(spec: TokenSpec | None) -> int:
    """Parent side: give back the jobserver bytes of workers that died."""
    if spec is None or spec.kind != "jobserver" or spec.holders is None:
        return 0
    source = _opened.get(spec)
    if not isinstance(source, JobserverClient) or source.pid != os.getpid():
        return 0
    return source.refill_from_dead(Path(spec.holders))


class Lease:
    """CPUs held by one running batch (see the module docstring).

    Parameters
    ----------
    source : TokenSource
        The program's token source, as opened in this process.
    take_implicit, give_implicit : callables, optional
        Claim and free the program's implicit token (the board's cell); for a
        source without one (the ledger) they are not used.
    share : ProgramShare, optional
        What the program's batches hold and how many of its threads wait
        (a pool's board): this batch's place in the queue of waiters
        (default: what this process holds).
    """

    def __init__(
        self,
        source: TokenSource,
        take_implicit: Callable[[], bool] | None = None,
        give_implicit: Callable[[], None] | None = None,
        share: ProgramShare | None = None,
    ) -> None:
        self.source = source
        self._take_implicit = take_implicit if source.implicit else None
        self._give_implicit = give_implicit
        self._share = share
        self._program_held = None if share is None else share.held
        # under budgeted run, the programs share their command's implicit CPU
        self._shared = getattr(source, "shared_implicit", False)
        self.implicit = False
        self.extra = 0
        self._next_top_up = 0.0

    @property
    def cpus(self) -> int:
        """CPUs held now: the implicit token and the extra tokens."""
        return int(self.implicit) + self.extra

    def start(self) -> None:
        """Wait (sleeping) until this batch holds one CPU.

        While it waits, it keeps one place in the source's queue (the
        program holding the fewest CPUs first, then the longest waiting).
        """
        with self.source.counting(self._program_held):
            self._start()
        if self.source.queue is not None:
            self.source.queue.drop_kept()  # its CPU came: the place is used
        self._held_now(self.cpus)

    def _held_now(self, cpus: int) -> None:
        """This batch holds ``cpus``: its share says so, and then the tickets
        of its program's waiting threads (their place in the queue)."""
        share = self._share
        if share is None:
            return
        share.report(cpus)
        queue = self.source.queue
        if queue is not None and share.waiting:
            queue.tell_held(share.held())

    def _start(self) -> None:
        if self._claim_implicit():
            self.implicit = True
            return
        self.extra += self.source.acquire(1)
        if self.cpus:
            return
        delay = IMPLICIT_POLL / 8
        with self.source.waiting(), _waiting_in(self._share):
            while self.cpus == 0:
                if self._claim_implicit():
                    self.implicit = True
                elif self.source.can_wait():
                    step = LOOK if self._shared else WAIT_STEP
                    got = self.source.acquire(1, block=True, timeout=step)
                    self.extra += got
                else:  # only the implicit token can come (make -j1)
                    time.sleep(delay)
                    delay = min(2 * delay, IMPLICIT_POLL)

    def _claim_implicit(self) -> bool:
        """The program's implicit CPU (the board's cell), and the command's
        lock when programs share one."""
        if self._take_implicit is None or not self._take_implicit():
            return False
        if self._shared and not self.source.take_implicit():
            self._give_implicit()
            return False
        return True

    def fit(self, want: int) -> int:
        """Hold up to ``want`` CPUs (at least the one held); return how many.

        More tokens are taken only if free now (after a top-up that found too
        few, not again for :data:`TOP_UP_BACKOFF` s), the program's implicit
        token first; tokens beyond ``want`` are given back at once.
        """
        want = max(want, 1)
        if self.cpus < want and time.monotonic() >= self._next_top_up:
            before = self.cpus
            with self.source.counting(self._program_held):
                self._top_up(want)
            if self.cpus != before:
                self._held_now(self.cpus)
        elif self.cpus > want and self.extra:
            give = min(self.extra, self.cpus - want)
            self._held_now(self.cpus - give)  # told before the tokens are seen
            self.extra -= self.source.release(give)
        return self.cpus

    def _held_after(self) -> int:
        """What the program holds once this batch gave everything back."""
        if self._program_held is not None:
            return self._program_held()  # the share says this batch holds 0
        return max(0, self.source.held - self.extra)

    def _top_up(self, want: int) -> None:
        if not self.implicit and self._claim_implicit():
            self.implicit = True  # came free since the lease started
        asked = want - self.cpus
        got = self.source.acquire(asked) if asked else 0
        self.extra += got
        if got < asked:
            self._next_top_up = time.monotonic() + TOP_UP_BACKOFF

    def end(self) -> None:
        """Give back every token held (the program keeping its place for a
        moment if another program waits: see the queue's ``keep_place``)."""
        self._held_now(0)  # told before the tokens are seen
        contested = self.extra or (self.implicit and self._shared)
        queue = self.source.queue
        if contested and queue is not None:
            queue.keep_place(self._held_after())
        if self.extra:
            self.extra -= self.source.release(self.extra)
        if self.implicit:
            self.implicit = False
            if self._shared:
                self.source.give_implicit()
            self._give_implicit()


class ProgramShare(Protocol):
    """What a program's batches hold, seen from one of them (its slot)."""

    waiting: int  #: the program's threads waiting for a token now

    def report(self, cpus: int) -> None:
        """This batch holds ``cpus`` now."""

    def held(self) -> int:
        """The CPUs the program's batches hold now."""

    def add_waiting(self, change: int) -> None:
        """``change`` threads of the program began (+) or ended (-) a wait."""


@contextlib.contextmanager
def _waiting_in(share: ProgramShare | None) -> Iterator[None]:
    if share is None:
        yield
        return
    share.add_waiting(+1)
    try:
        yield
    finally:
        share.add_waiting(-1)


@contextlib.contextmanager
def leased(source: TokenSource, *args, **kwargs) -> Iterator[Lease]:
    """A started :class:`Lease` on ``source`` inside the block, ended after
    (the other arguments are :class:`Lease`'s)."""
    lease = Lease(source, *args, **kwargs)
    try:
        lease.start()
        yield lease
    finally:
        lease.end()


@contextlib.contextmanager
def holding(spec: TokenSpec | None, *args, **kwargs) -> Iterator[Lease | None]:
    """A started :class:`Lease` on the source ``spec`` names inside the block
    (None without a source; the other arguments are :class:`Lease`'s)."""
    if spec is None:
        yield None
        return
    with leased(open_source(spec), *args, **kwargs) as lease:
        yield lease
