"""What every host-wide token source shares: counting what is held, giving it back.

A source hands out *extra* tokens: the program's own implicit token is never
taken from it. Subclasses say how to take one token without waiting
(:meth:`TokenSource._take_into`), give one back (:meth:`TokenSource._give`) and
wait until one may be free (:meth:`TokenSource._wait`), and may queue the
threads that wait (:meth:`TokenSource.waiting`); this class keeps the
handles taken (bytes of a jobserver, lock indices of a ledger), serialises
threads, and gives everything back on release, on an exception inside
:meth:`TokenSource.hold`, at interpreter exit (``atexit``) and from
:func:`release_all_tokens`, which a signal handler can call.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator

__all__ = ["TokenSource", "release_all_tokens"]

_SOURCES: weakref.WeakSet[TokenSource] = weakref.WeakSet()


_NOTHING = contextlib.nullcontext()


class TokenSource:
    """Tokens shared with other programs on this host.

    Attributes
    ----------
    kind : str
        ``"jobserver"`` or ``"ledger"``.
    implicit : bool
        Whether the program owns one implicit CPU besides the tokens (make's
        protocol); a ledger's tokens are every CPU, so it has none.
    """

    kind = "none"
    implicit = True
    #: The queue of waiting threads (:class:`~budgeted.hostwide.queue.WaitQueue`)
    #: that makes programs take turns; None: first to look, first served.
    queue = None

    def __init__(self) -> None:
        self._held: list[object] = []
        self._lock = threading.RLock()  # a signal handler may re-enter
        self._pid = os.getpid()
        _SOURCES.add(self)

    @property
    def pid(self) -> int:
        """The process this source was opened in."""
        return self._pid

    def can_wait(self) -> bool:
        """Whether a token may still come (False: ``-j1``, a closed jobserver)."""
        return self._usable()

    @property
    def held(self) -> int:
        """How many extra tokens this process holds now."""
        return len(self._held) if self._pid == os.getpid() else 0

    def acquire(
        self, want: int, block: bool = False, timeout: float | None = None
    ) -> int:
        """Take up to ``want`` extra tokens; return how many were taken.

        Without ``block``, only the tokens free now are taken (maybe 0). With
        ``block``, waits (sleeping, never spinning) until at least one is
        taken or ``timeout`` seconds have passed, then also takes the others
        free at that moment. Call it with ``block`` only while the program's
        implicit token is busy, or it may wait for CPUs it already has.
        """
        if want < 0:
            raise ValueError(f"want must be >= 0, got {want}")
        deadline = None if timeout is None else time.monotonic() + timeout
        got = self._take_now(want)
        if not block or got or not want or not self._usable():
            return got
        with self.waiting():
            while not got and self._usable():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if self.queue is not None:
                    self.queue.touch()
                self._wait(left)
                got = self._take_now(want)
        return got

    def release(self, count: int | None = None) -> int:
        """Give back ``count`` tokens (all by default); return how many."""
        with self._lock:
            self._forget_if_forked()
            count = len(self._held) if count is None else min(count, len(self._held))
            for _ in range(count):
                self._give(self._held.pop())
        return count

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside the block, this thread is waiting for a token.

        A source with a :attr:`queue` then serves it before the programs that
        start waiting later, and before any program taking without waiting.
        Blocks nest: the outermost one keeps the thread's place.
        """
        if self.queue is None:
            yield
        else:
            with self.queue.waiting():
                yield

    def counting(
        self, held: Callable[[], int] | None
    ) -> contextlib.AbstractContextManager:
        """Inside the block, ``held()`` is the CPUs this thread's program holds
        now: its place in the queue of waiters (fewest first). None: the
        tokens this process holds."""
        if self.queue is None or held is None:
            return _NOTHING
        return self.queue.counting(held)

    @contextlib.contextmanager
    def hold(self, want: int, block: bool = False) -> Iterator[int]:
        """``with source.hold(k) as got:``: tokens held inside, given back after."""
        got = self.acquire(want, block=block)
        try:
            yield got
        finally:
            self.release(got)

    def describe(self) -> dict:
        """What ``python -m budgeted info`` shows about this source."""
        return {"kind": self.kind, "held_here": self.held, "pid": os.getpid()}

    def close(self) -> None:
        """Give every token back and let go of the source's files."""
        self.release()

    def _take_now(self, want: int) -> int:
        with self._lock:
            self._forget_if_forked()
            got = 0
            if want and not self._may_take():
                return 0
            while got < want and self._take_into(self._held):
                got += 1
            return got

    def _forget_if_forked(self) -> None:
        """A forked child holds nothing: its parent's tokens stay the parent's."""
        if self._pid != os.getpid():
            self._held = []
            self._pid = os.getpid()
            self._after_fork()

    # Hooks for the subclasses.
    def _take_into(self, held: list) -> bool:
        """Take one token without waiting; append its handle to ``held``."""
        raise NotImplementedError

    def _give(self, handle: object) -> None:
        raise NotImplementedError

    def _wait(self, timeout: float | None) -> None:
        raise NotImplementedError

    def _usable(self) -> bool:
        """False once the source is gone (a jobserver that closed)."""
        return True

    def _may_take(self) -> bool:
        """False while another program has waited longer (see :attr:`queue`)."""
        return self.queue is None or self.queue.my_turn()

    def _after_fork(self) -> None:
        """Drop what a forked child must not use."""


def release_all_tokens() -> int:
    """Give back every token every source of this process holds.

    Runs at interpreter exit; call it from a SIGTERM/SIGINT handler too.
    """
    return sum(source.release() for source in list(_SOURCES))


atexit.register(release_all_tokens)
