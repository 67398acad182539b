"""Drive a :mod:`benchmarks.child` process with a time limit on every answer.

joblib's ``multiprocessing`` backend forks; after OpenMP has started in the
parent, the forked workers deadlock (0 % CPU, forever). A child that does not
answer in time is reported as hung: its whole process group and every
descendant are killed, and its leftovers are removed (the private
``JOBLIB_TEMP_FOLDER`` it was given, and the loky semaphores and budgeted
boards that name one of its processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

__all__ = ["ChildFailed", "ChildHung", "TimedChild"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
_SHM = Path("/dev/shm")
#: Share of one core below which a child (with its descendants) counts as idle.
_IDLE_SHARE = 0.05


class ChildHung(RuntimeError):
    """The child did not answer within its time limit (it has been killed)."""


class ChildFailed(RuntimeError):
    """The child answered with an error, or died."""


def _scratch_root() -> str | None:
    """Same kind of folder joblib would use (``/dev/shm``) when writable."""
    return str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None


class TimedChild:
    """One benchmark child process running one variant.

    Parameters
    ----------
    variant : str
        Variant name (see :mod:`benchmarks.variants`).
    startup_timeout : float, default=120
        Seconds allowed for the interpreter to start and import.
    log : file, optional
        Where the child's stderr goes (default: a file in its scratch folder).
    """

    def __init__(self, variant: str, startup_timeout: float = 120.0, log=None) -> None:
        self.variant = variant
        self.scratch = Path(
            tempfile.mkdtemp(prefix="budgeted-bench-", dir=_scratch_root())
        )
        self.removed: list[Path] = []
        # psutil.Process objects remember their start time, so a PID reused by
        # an unrelated process after ours exited is never signalled.
        self._procs: dict[int, psutil.Process] = {}
        self._owns_log = log is None
        self._log = (
            log
            if log is not None
            else tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in close())
                "w", prefix=f"budgeted-bench-{variant}-", suffix=".log"
            )
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.child", "--variant", variant],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=_REPO_ROOT,
            env=self._child_env(),
            start_new_session=True,
            text=True,
        )
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True).start()
        self._startup_timeout = startup_timeout
        self._ready = False

    def wait_ready(self) -> None:
        """Wait for the child's first answer (it has imported everything)."""
        if not self._ready:
            self._wait_answer(self._startup_timeout)
            self._ready = True

    def _child_env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        pythonpath = str(_REPO_ROOT) + (os.pathsep + path if path else "")
        return {
            **os.environ,
            "JOBLIB_TEMP_FOLDER": str(self.scratch),
            "PYTHONPATH": pythonpath,
        }

    def _read_answers(self) -> None:
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)  # end of stream: the child died

    @property
    def pids(self) -> frozenset[int]:
        """The child and every descendant seen so far (kept after a kill)."""
        return frozenset(self._procs)

    @property
    def alive(self) -> bool:
        """True while the child process runs."""
        return self.proc.poll() is None

    def request(
        self, message: dict, timeout: float, idle_timeout: float | None = None
    ) -> dict:
        """Send ``message`` and return the answer within ``timeout`` seconds.

        Parameters
        ----------
        message : dict
            The command (see :mod:`benchmarks.child`).
        timeout : float
            Seconds to wait for the answer.
        idle_timeout : float, optional
            Also give up when the child and its descendants together use no
            CPU for this long (a deadlock: forked workers sit at 0 % CPU).

        Raises
        ------
        ChildHung
            No answer in time; the child and its descendants have been killed.
        ChildFailed
            The child answered with an error or died.
        """
        self.wait_ready()
        if not self.alive:
            raise ChildFailed(f"{self.variant} child is not running")
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._wait_answer(timeout, idle_timeout)

    def _wait_answer(self, timeout: float, idle_timeout: float | None = None) -> dict:
        self._remember_descendants()
        line = self._next_line(timeout, idle_timeout)
        if line is None:
            tail = self.log_tail()
            self.kill()
            raise ChildFailed(f"{self.variant} child died:\n{tail}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ChildFailed(
                f"{self.variant}: {answer.get('error')}\n{self.log_tail()}"
            )
        return answer

    def _next_line(self, timeout: float, idle_timeout: float | None) -> str | None:
        """The next answer line; kill and raise :class:`ChildHung` on a time-out."""
        deadline = time.monotonic() + timeout
        window = (time.monotonic(), self._cpu_seconds())  # since the child was busy
        while True:
            wait = max(0.0, min(1.0, deadline - time.monotonic()))
            with contextlib.suppress(queue.Empty):
                return self._answers.get(timeout=wait)
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                raise ChildHung(f"{self.variant}: no answer after {timeout:.0f} s")
            self._remember_descendants()
            window = self._idle_window(window, now)
            if idle_timeout is not None and now - window[0] >= idle_timeout:
                self.kill()
                raise ChildHung(
                    f"{self.variant}: no answer, and no CPU used "
                    f"for {idle_timeout:.0f} s (deadlock)"
                )

    def _idle_window(self, window: tuple[float, float], now: float):
        """Restart the idle window when the child used CPU since it began."""
        start, cpu_at_start = window
        cpu = self._cpu_seconds()
        if cpu < cpu_at_start or cpu - cpu_at_start > _IDLE_SHARE * (now - start):
            return now, cpu
        return window

    def _cpu_seconds(self) -> float:
        """CPU time used so far by the child and the descendants it has now."""
        total = 0.0
        for proc in list(self._procs.values()):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the child wrote to stderr."""
        self._log.flush()
        with contextlib.suppress(OSError):
            return "\n".join(Path(self._log.name).read_text().splitlines()[-lines:])
        return ""

    def _remember_descendants(self) -> None:
        if not self.alive:
            return
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.proc.pid)
            for p in [proc, *proc.children(recursive=True)]:
                self._procs.setdefault(p.pid, p)

    def kill(self) -> None:
        """Kill the child, its process group and every descendant; clean up."""
        self._remember_descendants()
        if self.alive:  # not yet reaped: its PID is still its group's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for proc in self._procs.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil refuses if the PID was reused
        self.proc.wait()
        others = [p for pid, p in self._procs.items() if pid != self.proc.pid]
        psutil.wait_procs(others, timeout=10)
        self._remove_leftovers()

    def ask_to_quit(self) -> None:
        """Tell the child to exit (without waiting); see :meth:`close`."""
        if self.alive and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()

    def close(self, timeout: float = 30.0) -> None:
        """Ask the child to quit; kill it if it does not within ``timeout``."""
        self.ask_to_quit()
        if self.alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()
        if self._owns_log:
            self._log.close()

    def _remove_leftovers(self) -> None:
        """Remove the scratch folder, then what our dead processes left.

        budgeted's own clean-up helpers do the matching (memmap folders and
        loky semaphores by creator PID, boards whose owner is gone); the
        ``alive`` filter restricts them to this child's processes.
        """
        from budgeted.board import board_dir, remove_stale_boards
        from budgeted.leftovers import pid_alive
        from budgeted.tempdir import remove_stale_folders

        if self.scratch.exists():
            self.removed.extend(sorted(self.scratch.rglob("*")))
            shutil.rmtree(self.scratch, ignore_errors=True)
        ours = set(self._procs)

        def alive(pid: int) -> bool:
            return pid not in ours or pid_alive(pid)

        self.removed.extend(remove_stale_folders([_SHM], alive=alive))
        self.removed.extend(remove_stale_boards(board_dir()))
