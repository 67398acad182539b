"""When a call fails: clear errors, and cleanup that runs on SIGTERM too.

* A worker killed mid-task: loky's ``TerminatedWorkerError`` is re-raised
  with loky's message first, then the tasks of the batch that was lost.
* A task that cannot be pickled: loky's ``PicklingError`` message first, then
  the function or argument (position or keyword) that failed.

Code that matches loky's messages therefore matches ours.
* SIGTERM: while a process-mode call runs in the main thread, SIGTERM raises
  ``SystemExit(143)`` there instead of killing the process outright, so
  joblib aborts the call (workers killed, memmap folders and the board
  removed) and the interpreter exits through its normal cleanup. Only a
  default (``SIG_DFL``) handler is replaced, and the previous one is put back
  when the call ends; importing budgeted installs nothing.
"""

from __future__ import annotations

import pickle
import signal
import threading

import cloudpickle

from . import _compat

__all__ = ["SigtermGuard", "describe_batch", "explain_failure"]

_MAX_SHOWN = 3


def _task_name(func) -> str:
    func = getattr(func, "func", func)  # functools.partial
    return getattr(func, "__qualname__", None) or type(func).__name__


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_batch(batch) -> str:
    """A short text naming the tasks of a joblib batch, e.g. ``f(1, 'a')``."""
    items = getattr(batch, "items", None)
    if not items:
        return _task_name(batch)
    shown = []
    for func, args, kwargs in items[:_MAX_SHOWN]:
        params = [_short(a) for a in args]
        params += [f"{k}={_short(v)}" for k, v in kwargs.items()]
        shown.append(f"{_task_name(func)}({', '.join(params)})")
    more = len(items) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _unpicklable_part(batch) -> str | None:
    """Which part of a batch cannot be pickled, as text; None if all can."""
    for func, args, kwargs in getattr(batch, "items", ()):
        name = _task_name(func)
        parts = [(f"the function {name}", func)]
        parts += [(f"argument {i} of {name}", a) for i, a in enumerate(args)]
        parts += [(f"argument {k!r} of {name}", v) for k, v in kwargs.items()]
        for label, value in parts:
            try:
                cloudpickle.dumps(value)
            except Exception as exc:  # noqa: BLE001 - any pickling failure
                return f"{label} ({type(value).__name__}: {exc})"
    return None


def explain_failure(exc: BaseException, batch) -> BaseException | None:
    """A clearer exception for ``exc`` raised by ``batch``, or None to keep it.

    Same type as ``exc``, and ``exc``'s own (loky's) message comes first.
    """
    if isinstance(exc, _compat.TerminatedWorkerError):
        return _compat.TerminatedWorkerError(
            f"{exc}\nA batch this call lost: {describe_batch(batch)}; the"
            " pool is restarted for the next call."
        )
    if isinstance(exc, pickle.PicklingError):
        part = _unpicklable_part(batch)
        if part is not None:
            return pickle.PicklingError(f"{exc} The cause: {part} cannot be pickled.")
    return None


class _Terminated(SystemExit):
    """SIGTERM received during a budgeted call (exit status 128 + 15)."""


class SigtermGuard:
    """Turns SIGTERM into ``SystemExit`` while installed (see module docstring).

    The first SIGTERM raises; later ones, while the call cleans up, are
    ignored so they cannot interrupt the cleanup.
    """

    def __init__(self) -> None:
        self._previous = None
        self._installed = False
        self._fired = False

    def _handle(self, signum, frame) -> None:
        if not self._fired:
            self._fired = True
            raise _Terminated(128 + signum)

    def install(self) -> None:
        """Install, if in the main thread and SIGTERM has its default action."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the user's own handler (or SIG_IGN) decides
        self._fired = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def restore(self) -> None:
        """Put the previous handler back, unless someone replaced ours since."""
        if not self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        self._installed = False
        if signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous)
