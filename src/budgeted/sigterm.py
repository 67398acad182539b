"""SIGTERM during a budgeted call: a clean exit instead of a hard kill.

While a process-mode call runs in the main thread, SIGTERM raises
``SystemExit(143)`` there instead of killing the process outright, so joblib
aborts the call (workers killed, memmap folders, the board and host tokens
given back) and the interpreter exits through its normal cleanup. Only a
default (``SIG_DFL``) handler is replaced, and the previous one is put back
when the call ends; importing budgeted installs nothing.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["SigtermGuard"]


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
