"""A client of a GNU make jobserver, pipe or fifo style.

The protocol (make manual, "POSIX Jobserver Interaction")::

    make -j3 ──> pipe or fifo holding 2 one-byte tokens ("++")
                 │ read 1 byte  = take a token    (wait while it is empty)
                 │ write it back = give it back   (the same byte)
    every client also owns one implicit token that is never in the pipe.

Reading never changes the blocking mode of make's descriptors (make relies on
it): for the pipe style, ``/proc/self/fd/R`` is opened again, which on Linux
gives this process its own *file description* that can be non-blocking (as
the kernel's ``jobserver-exec`` and cc-rs do; a ``dup`` would share make's).
Waiting is ``poll`` on that descriptor; a read after ``poll`` that loses the
race to another client gets ``EAGAIN`` and waits again. A fifo is opened
read-write, so opening never blocks and no reader ever sees end of file.

Under ``budgeted run`` (see :mod:`budgeted.hostwide.server`) the client also
keeps a locked *holdings record* beside the fifo with the number of bytes it
holds, so that the server can write back the bytes of a client that died
(:mod:`budgeted.hostwide.holdings`, whose names are re-exported here), and
the budgeted programs under it queue for tokens in the server's folder
(:mod:`budgeted.hostwide.queue`), so that they take turns. Under any other
jobserver (``make -jN``) the budgeted programs of this user queue in a
transient folder named after the pipe, inside the user's private ledger
folder: ``jobserver-<device>-<inode>`` (the pipe's, the same in every
process that has it open, whatever the descriptor numbers or path).
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import termios
import time
from pathlib import Path

from .holdings import (
    HOLDERS_DIR,
    IMPLICIT_LOCK,
    SERVER_PREFIX,
    HoldingsRecord,
    refill_from_dead,
)
from .ledger import LedgerUnusable, private_folder
from .makeflags import JobserverAuth
from .queue import TRANSIENT_PREFIX, WaitQueue
from .source import TokenSource

__all__ = [
    "HOLDERS_DIR",
    "IMPLICIT_LOCK",
    "SERVER_PREFIX",
    "JobserverClient",
    "JobserverUnusable",
    "open_jobserver",
    "refill_from_dead",
]

#: How long a queued waiter whose turn it is not sleeps before it looks again.
QUEUE_STEP = 0.005
#: Longest wait on the fifo between two looks at the queue, when it is this
#: thread's turn (its ticket is touched, and told what its program holds, at
#: every look).
LOOK = 0.01


class JobserverUnusable(OSError):
    """The jobserver named in the environment cannot be used."""


def _check_pipe_fd(
    auth: JobserverAuth, fd: int, access: tuple[int, ...]
) -> os.stat_result:
    named = f"{auth.variable} names jobserver {auth.where()}, but fd {fd}"
    try:
        info = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise JobserverUnusable(f"{named} is closed") from None
    if not stat.S_ISFIFO(info.st_mode):
        raise JobserverUnusable(f"{named} is not a pipe")
    if mode not in access:
        raise JobserverUnusable(
            f"{named} is not open for {'reading' if fd == auth.read_fd else 'writing'}"
        )
    return info


def _open_pipe(auth: JobserverAuth) -> tuple[int, int]:
    """A private non-blocking read descriptor and make's write descriptor."""
    read_info = _check_pipe_fd(auth, auth.read_fd, (os.O_RDONLY, os.O_RDWR))
    write_info = _check_pipe_fd(auth, auth.write_fd, (os.O_WRONLY, os.O_RDWR))
    if (read_info.st_dev, read_info.st_ino) != (write_info.st_dev, write_info.st_ino):
        msg = f"{auth.variable} names jobserver {auth.where()}: two different pipes"
        raise JobserverUnusable(msg)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(f"/proc/self/fd/{auth.read_fd}", flags), auth.write_fd
    except OSError as exc:
        msg = (
            f"{auth.variable}: cannot open jobserver fd {auth.read_fd} privately: {exc}"
        )
        raise JobserverUnusable(msg) from None


def _open_fifo(auth: JobserverAuth) -> int:
    try:
        if not stat.S_ISFIFO(os.stat(auth.path).st_mode):
            msg = f"{auth.variable} names jobserver {auth.where()}, which is not a fifo"
            raise JobserverUnusable(msg)
        return os.open(auth.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, JobserverUnusable):
            raise
        msg = f"{auth.variable} names jobserver {auth.where()}: {exc.strerror}"
        raise JobserverUnusable(msg) from None


class JobserverClient(TokenSource):
    """Tokens from a make jobserver (see the module docstring).

    Parameters
    ----------
    auth : JobserverAuth
        Where the jobserver is (see :func:`budgeted.hostwide.makeflags.find_jobserver`).
    holders : Path, optional
        A folder to keep this client's holdings record in (a budgeted
        program's worker: its parent writes back what a dead worker held).
        Under ``budgeted run`` the server's own folder is used.
    program : int, optional
        The program this process works for (its main process's PID, the
        default this process's). Under ``budgeted run`` the budgeted
        programs wait in one queue (:mod:`budgeted.hostwide.queue`, in the
        server's folder): the program holding the fewest CPUs is served
        first, then the one that waited longest.
    """

    kind = "jobserver"

    def __init__(
        self,
        auth: JobserverAuth,
        holders: Path | None = None,
        program: int | None = None,
    ) -> None:
        super().__init__()
        self.auth = auth
        self.program = os.getpid() if program is None else program
        self._holders = holders
        if auth.style == "pipe":
            self._read_fd, self._write_fd = _open_pipe(auth)
            self._own_write = False
        else:
            self._read_fd = self._write_fd = _open_fifo(auth)
            self._own_write = True
        self._closed = False
        self._record = self._holdings_record()
        self._implicit_fd = self._implicit_lock()
        self.queue = self._wait_queue()

    def _wait_queue(self) -> WaitQueue | None:
        """The queue of this jobserver's budgeted waiters: in the folder of
        ``budgeted run``'s server, else in a transient private folder named
        after the pipe (None if the private folder cannot be used)."""
        if self._implicit_fd is not None:  # under budgeted run
            folder = Path(self.auth.path).parent
            return WaitQueue(folder, self.program, process_held=self._held_now)
        try:
            parent = private_folder()
            pipe = os.fstat(self._read_fd)
        except (LedgerUnusable, OSError):
            return None
        folder = parent / f"{TRANSIENT_PREFIX}{pipe.st_dev}-{pipe.st_ino}"
        held = self._held_now
        return WaitQueue(folder, self.program, process_held=held, transient=True)

    def _held_now(self) -> int:
        return self.held

    def _holdings_record(self) -> HoldingsRecord | None:
        if self.auth.style != "fifo":
            return None
        server = Path(self.auth.path).parent
        folder = server / HOLDERS_DIR
        try:
            ours = (
                server.name.startswith(SERVER_PREFIX)
                and folder.stat().st_uid == os.getuid()
            )
            if not ours and self._holders is not None:
                folder, ours = self._holders, self._holders.is_dir()
            return HoldingsRecord(folder) if ours else None
        except OSError:
            return None

    def _implicit_lock(self) -> int | None:
        """Under ``budgeted run``: the lock standing for CMD's implicit CPU.

        Every budgeted program under the command would otherwise count an
        implicit CPU of its own (two programs started by a shell: two), so
        they share the one the command owns: whoever locks the file holds it.
        """
        if self.auth.style != "fifo":
            return None
        server = Path(self.auth.path).parent
        if not server.name.startswith(SERVER_PREFIX):
            return None
        try:
            return os.open(server / IMPLICIT_LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    @property
    def shared_implicit(self) -> bool:
        """Whether the implicit CPU is shared by the programs under a server."""
        return self._implicit_fd is not None

    def take_implicit(self) -> bool:
        """Hold the shared implicit CPU if it is free and no waiter of another
        program is ahead in the queue (see :attr:`shared_implicit`)."""
        if not self._may_take():
            return False
        try:
            fcntl.flock(self._implicit_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def give_implicit(self) -> None:
        """Give the shared implicit CPU back."""
        fcntl.flock(self._implicit_fd, fcntl.LOCK_UN)

    def refill_from_dead(self, holders: Path) -> int:
        """Write back the bytes of clients with records in ``holders`` that died."""
        if self._closed:
            return 0
        return refill_from_dead(holders, self._write_fd)

    def _take_into(self, held: list) -> bool:
        if self._closed:
            return False
        try:
            # One expression: no Python signal handler can run between the
            # read and the append, so a token read is never forgotten.
            held.append(os.read(self._read_fd, 1))
        except (BlockingIOError, InterruptedError):
            return False
        if held[-1] == b"":  # end of file: every writer has gone
            held.pop()
            self._closed = True
            return False
        if self._record is not None:
            self._record.write(len(held))
        return True

    def _give(self, handle: object) -> None:
        if self._record is not None:
            self._record.write(len(self._held))  # before: a crash loses, never adds
        try:
            os.write(self._write_fd, handle)
        except BrokenPipeError:
            self._closed = True  # the jobserver has gone: nothing to give back to

    def _wait(self, timeout: float | None) -> None:
        if self.queue is not None and not self.queue.my_turn():
            # a byte may be there, but for a waiter ahead in the queue
            time.sleep(QUEUE_STEP if timeout is None else min(QUEUE_STEP, timeout))
            return
        if self.queue is not None:  # look again soon: the ticket stays fresh
            # and says what the program holds now (its place in the queue)
            timeout = LOOK if timeout is None else min(timeout, LOOK)
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        ms = -1 if timeout is None else max(1, int(timeout * 1000))
        for _, event in poller.poll(ms):
            if event & (select.POLLERR | select.POLLNVAL):
                self._closed = True

    def _usable(self) -> bool:
        return not self._closed and self.auth.jobs != 1  # -j1: never a token

    def free_tokens(self) -> int:
        """Bytes in the pipe now (tokens nobody holds)."""
        return int.from_bytes(
            fcntl.ioctl(self._read_fd, termios.FIONREAD, b"\0\0\0\0"), "little"
        )

    def describe(self) -> dict:
        report = super().describe()
        free = None if self._closed else self.free_tokens()
        jobs = self.auth.jobs
        report.update(
            style=self.auth.style,
            where=self.auth.where(),
            variable=self.auth.variable,
            jobs=jobs,
            free=free,
            in_use=None if jobs is None or free is None else max(0, jobs - 1 - free),
            waiting={} if self.queue is None else self.queue.waiters(),
        )
        return report

    def close(self) -> None:
        super().close()
        if self._record is not None:
            self._record.close()
            self._record = None
        self._closed = True
        os.close(self._read_fd)

    def _after_fork(self) -> None:
        self._record = None  # the parent's record: never touched by a child
        self._implicit_fd = None  # it shares the parent's lock: let it be


def open_jobserver(auth: JobserverAuth) -> JobserverClient:
    """A client of the jobserver ``auth`` names.

    Raises
    ------
    JobserverUnusable
        When it does not exist, is closed or is not a pipe (the message names
        the variable and the problem).
    """
    return JobserverClient(auth)
