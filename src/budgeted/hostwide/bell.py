"""How a ledger waiter sleeps: until a token may be free, not on a fixed beat.

::

    <ledger folder>/bell      rung (truncated: one syscall) by every release

A thread that finds no free token sleeps on the ledger folder through Linux's
inotify, and wakes when:

* the bell rings: a program gave a token back;
* a token file is closed by a process that had it open: a holder that
  exited, also one killed with SIGKILL, whose lock the kernel drops;
* a waiter's ticket is removed: the waiter ahead was served, and the next
  one may take what is left;
* nothing happened for a while (:data:`POLL`): what no event says, a kept
  place or a stopped program's ticket going stale, is seen then.

An event that found nothing to take (another waiter was served) is followed
by a quiet sleep, 1 ms doubling up to 10 ms (:data:`QUIET`), so a program
whose batches give tokens back thousands of times a second cannot make its
waiters spin: they look at most as often as a waiter that only polled.

The threads of one process share one inotify instance (one of the user's
128 by default): one of them watches it, and wakes the others
(:class:`threading.Condition`). Without inotify (another system, no
instance left) a waiter polls, 1 ms doubling up to 10 ms, as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import stat
import struct
import threading
import time
from pathlib import Path

from .queue import TICKET_PREFIX

__all__ = ["BELL_NAME", "POLL", "QUIET", "Bell"]

#: The file in the ledger folder a release rings.
BELL_NAME = "bell"
#: First and longest sleep (seconds) of a waiter with no event to wait for.
POLL = (0.001, 0.05)
#: First and longest quiet sleep (seconds) after an event that found nothing.
QUIET = (0.001, 0.01)
#: First and longest sleep (seconds) of a waiter without inotify.
POLL_WITHOUT = (0.001, 0.01)

# <sys/inotify.h>; IN_NONBLOCK and IN_CLOEXEC are O_NONBLOCK and O_CLOEXEC.
_IN_MODIFY = 0x002
_IN_CLOSE_NOWRITE = 0x010
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name
_TICKET_PREFIX = TICKET_PREFIX.encode()


@functools.cache
def _libc():
    """The C library's inotify functions (loaded at the first wait, not at
    import); None where there are none."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library Python uses
        add_watch = libc.inotify_add_watch
        libc.inotify_init1  # noqa: B018  (AttributeError where there is none)
    except (OSError, AttributeError):
        return None
    add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


class Bell:
    """The bell of a ledger folder and this process's way to sleep on it.

    Parameters
    ----------
    folder : Path
        The ledger folder.
    file_mode : int
        Mode of the bell file if this process creates it; every program of
        the ledger must be able to ring it, so it is made writable by whoever
        may read the tokens (0600 in a private folder, 0660 in a shared one).
    n_tokens : int
        How many token files (``token-0`` on) this process's waiters can
        use: they are watched for a holder's exit.
    """

    def __init__(self, folder: Path, file_mode: int, n_tokens: int) -> None:
        self.folder = Path(folder)
        self.path = self.folder / BELL_NAME
        self._file_mode = file_mode | (file_mode & 0o440) >> 1  # readers ring
        self._n_tokens = n_tokens
        self._reset()

    def _reset(self) -> None:
        """Start afresh (a new object, or a forked child: the parent's
        descriptors and the state of its threads are not ours)."""
        self._pid = os.getpid()
        self._lock = threading.RLock()  # a signal handler may ring
        self._ring_fd: int | None = None
        self._inotify: int | None = None
        self._wanted: dict[int, int] = {}  # watch -> the events that wake
        self._folder_watch = -1
        self._broken = False  # True: no inotify (or closed): poll
        self._unringable = False  # True: no bell this process may ring
        self._changed = threading.Condition(threading.Lock())
        self._events = 0  # events this process's watcher saw
        self._watching = False
        self._local = threading.local()

    # Ringing -------------------------------------------------------------

    def ring(self) -> None:
        """Wake the waiters: a token was given back (one ``ftruncate``)."""
        if self._pid != os.getpid():
            self._forget()
        fd = self._ring_fd
        if fd is None:
            if self._unringable:
                return
            fd = self._open_bell()
            if fd is None:
                self._unringable = True  # not tried again at every batch
                return
        try:  # noqa: SIM105  (per batch: no context manager)
            os.ftruncate(fd, 0)
        except OSError:
            pass

    def _open_bell(self) -> int | None:
        with self._lock:
            if self._ring_fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                try:  # non-blocking: a fifo put there cannot hold us
                    fd = os.open(self.path, flags | os.O_NONBLOCK, self._file_mode)
                    info = os.fstat(fd)
                except OSError:
                    return None  # a bell we may not ring: waiters poll
                if not stat.S_ISREG(info.st_mode):
                    os.close(fd)
                    return None
                if info.st_uid == os.getuid():
                    with contextlib.suppress(OSError):
                        os.fchmod(fd, self._file_mode)  # whatever the umask
                self._ring_fd = fd
            return self._ring_fd

    # Waiting -------------------------------------------------------------

    def mark(self) -> None:
        """This thread looks now: what happens from here on wakes its next
        :meth:`sleep` (call it before looking for a free token)."""
        self._local.seen = self._events

    def served(self) -> None:
        """This thread took a token: its next wait starts with short sleeps."""
        local = self._local
        if getattr(local, "slept", True):  # per batch: write only after a wait
            local.delay = POLL[0]
            local.quiet = QUIET[0]
            local.after_event = False
            local.slept = False

    def sleep(self, timeout: float | None) -> None:
        """Sleep until a token may be free (see the module docstring), at
        most ``timeout`` seconds."""
        if self._pid != os.getpid():
            self._forget()  # a forked child: a new thread-local state too
        local = self._local
        if not hasattr(local, "delay"):
            self.served()
        local.slept = True
        cap = float("inf") if timeout is None else max(0.0, timeout)
        if local.after_event:  # the last event found nothing: a quiet sleep
            local.after_event = False
            time.sleep(min(local.quiet, cap))
            local.quiet = min(2 * local.quiet, QUIET[1])
            return
        if not self._listening():
            time.sleep(min(local.delay, cap))
            local.delay = min(2 * local.delay, POLL_WITHOUT[1])
            return
        seen = getattr(local, "seen", self._events)
        if self._wait_event(seen, min(local.delay, cap)):
            local.after_event = True
        else:
            local.delay = min(2 * local.delay, POLL[1])
            local.quiet = QUIET[0]

    def _wait_event(self, seen: int, timeout: float) -> bool:
        """Whether an event came after ``seen`` within ``timeout`` seconds.

        One thread at a time reads the inotify instance; the others wait for
        it to say what it saw.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                while True:
                    if self._events != seen:
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if not self._watching:
                        self._watching = True
                        break
                    self._changed.wait(left)
            woke = False
            try:
                woke = self._read_events(left)
            finally:
                with self._changed:
                    self._watching = False
                    if woke:
                        self._events += 1
                    self._changed.notify_all()
            if woke:
                return True

    def _read_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s on the inotify instance; whether an event
        that may free a token came (others are read and dropped)."""
        fd = self._inotify
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except (OSError, TypeError, ValueError):  # closed meanwhile: sleep
            time.sleep(timeout)
            return False
        if not ready:
            return False
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False  # read by no one else (one watcher): spurious
        except OSError:
            return True
        return self._wakes(data)

    def _wakes(self, data: bytes) -> bool:
        found = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            watch, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            if mask & (_IN_Q_OVERFLOW | _IN_IGNORED):
                found = True  # events lost, or a watched file removed
            elif watch == self._folder_watch:
                found = found or name.startswith(_TICKET_PREFIX)
            elif mask & self._wanted.get(watch, 0):
                found = True
        return found

    def _listening(self) -> bool:
        """Whether this process sleeps on inotify (made at its first wait)."""
        if self._inotify is not None:
            return True
        if self._broken:
            return False
        with self._lock:
            if self._inotify is None and not self._broken:
                self._start_listening()
        return self._inotify is not None

    def _start_listening(self) -> None:
        libc = _libc()
        fd = -1 if libc is None else libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:  # no inotify, or no instance left (EMFILE): poll
            self._broken = True
            return
        self._open_bell()  # the bell must exist to be watched
        wanted = {}
        watches = [(self.folder, _IN_DELETE), (self.path, _IN_MODIFY)]
        watches += [
            (self.folder / f"token-{index}", _IN_CLOSE_NOWRITE)
            for index in range(self._n_tokens)
        ]
        for path, mask in watches:
            watch = libc.inotify_add_watch(fd, os.fsencode(path), mask)
            if watch >= 0:
                wanted[watch] = mask
            if path == self.folder:
                if watch < 0:
                    os.close(fd)
                    self._broken = True
                    return
                self._folder_watch = watch
        self._wanted = wanted
        self._inotify = fd

    # Lifetime ------------------------------------------------------------

    def _forget(self) -> None:
        """A forked child: close its copies of the parent's descriptors."""
        for fd in (self._ring_fd, self._inotify):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reset()

    def close(self) -> None:
        """Let go of the bell and the inotify instance."""
        with self._lock:
            fds = (self._ring_fd, self._inotify)
            self._ring_fd = self._inotify = None
            self._broken = True
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
