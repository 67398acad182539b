"""The worker side of "every process dies with its program".

A loky worker whose parent is killed with SIGKILL would otherwise run its
task to the end, or sit idle for minutes, adopted by init. Every pool that
budgeted starts runs :func:`watch_parent` first in each worker::

    parent (pid P)                          worker
    ──────────────                          ──────
    initargs = (P,)  ─────────────────────> watch_parent(P)
                                              Linux, spawned by P's main thread:
                                                prctl(PR_SET_PDEATHSIG, SIGKILL)
                                              always: a daemon thread waits on
                                                pidfd_open(P) (elsewhere: polls
                                                every 0.25 s)
    P dies ───────────────────────────────> the kernel kills the worker, or
                                            the thread does, within ~0.25 s

``PR_SET_PDEATHSIG`` fires when the *thread* that spawned the worker exits,
not the process: loky spawns workers from whichever thread calls ``submit``
(or from its manager thread on a respawn), so it is set only when the
spawning thread is the parent's main thread, which lives as long as the
process. The watchdog thread covers every other case, and busy workers too:
a task's pure-Python loop yields the GIL every few milliseconds, and long
native calls (BLAS, ``time.sleep``) release it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = ["lifeline_initializer", "watch_parent"]

#: Seconds between two looks at the parent where no pidfd can be waited on.
POLL_INTERVAL = 0.25
_PR_SET_PDEATHSIG = 1


def lifeline_initializer(
    initializer: Callable | None = None, initargs: tuple = ()
) -> tuple[Callable, tuple]:
    """A pool's ``(initializer, initargs)``: :func:`watch_parent`, then the given.

    The arguments compare equal between calls made with the same ones in one
    process, so loky keeps reusing its executor.
    """
    return _watch_then_run, (os.getpid(), initializer, tuple(initargs))


def _watch_then_run(parent_pid: int, initializer, initargs: tuple) -> None:
    watch_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def watch_parent(parent_pid: int) -> None:
    """Worker initializer: die (SIGKILL) as soon as ``parent_pid`` is gone.

    Parameters
    ----------
    parent_pid : int
        The process that started this pool (its ``os.getpid()``).
        Under ``forkserver`` it is the server's parent, which takes the
        server down with it.
    """
    if os.getppid() == parent_pid and _spawned_by_main_thread(parent_pid):
        _set_parent_death_signal()
    waiter = _pidfd_waiter(parent_pid)
    if waiter is None and os.getppid() == parent_pid:
        waiter = _ppid_poller(parent_pid)
    elif waiter is None:
        waiter = _pid_poller(parent_pid)
    threading.Thread(target=waiter, name="budgeted-lifeline", daemon=True).start()


def _spawned_by_main_thread(parent_pid: int) -> bool:
    """Whether the parent's main thread (tid == pid) lists us as its child."""
    children = Path(f"/proc/{parent_pid}/task/{parent_pid}/children")
    try:
        return str(os.getpid()) in children.read_text().split()
    except OSError:  # not Linux, or no CONFIG_PROC_CHILDREN
        return False


def _set_parent_death_signal() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``; then re-check the parent."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        # the interpreter's own symbols include libc's (no ldconfig lookup)
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took hold
        _die()


def _pidfd_waiter(pid: int):
    """A function that blocks until ``pid`` exits, then kills us (Linux)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _die()
    except OSError:  # kernel without pidfd (< 5.3), seccomp ...
        return None

    def wait() -> None:
        select.select([fd], [], [])
        _die()

    return wait


def _ppid_poller(parent_pid: int):
    """A function that polls ``os.getppid()`` (re-parenting means death)."""

    def poll() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_INTERVAL)
        _die()

    return poll


def _pid_poller(pid: int):
    """A function that polls whether ``pid`` runs (forkserver elsewhere).

    A dead parent that its own parent has not reaped yet is a zombie: it
    counts as gone. The process is identified once, so a PID reused by a
    new process is not taken for the parent.
    """
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        _die()

    def poll() -> None:
        while _running(parent):
            time.sleep(POLL_INTERVAL)
        _die()

    return poll


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # alive, owned by someone else
        return True


def _die() -> None:
    """End this worker at once, whatever its threads are doing."""
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)  # Windows
