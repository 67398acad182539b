"""What a task really sees: used by ``python -m budgeted check`` and the tests.

:func:`probe` runs *inside* a task and reports the thread pools as the
libraries themselves report them (threadpoolctl), the environment the task
got and its PID. :class:`FileBarrier` makes tasks in different processes wait
for each other, so that they provably run at the same time.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_info

from .cpus import MAX_CPU_COUNT_VAR
from .threadenv import THREAD_LIBRARIES, current_budget

__all__ = ["FileBarrier", "Probe", "probe"]


@dataclass(frozen=True)
class Probe:
    """A task's view of its thread budget.

    Attributes
    ----------
    pid, thread : int
        Process and OS thread that ran the task.
    budget : int
        :func:`budgeted.current_budget` in the task.
    pools : dict of str to int
        ``num_threads`` per threadpoolctl ``internal_api`` (OpenMP for the
        calling thread).
    env : dict of str to str
        The thread-pool variables in the task's environment.
    os_threads : int
        Threads of the process (psutil).
    """

    pid: int
    thread: int
    budget: int
    pools: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    os_threads: int = 0

    def as_dict(self) -> dict:
        """Plain-dict form (for JSON)."""
        return asdict(self)


def probe(barrier: FileBarrier | None = None, work=None) -> Probe:
    """Report what the calling task sees; optionally wait on ``barrier`` after.

    Parameters
    ----------
    barrier : FileBarrier, optional
        Waited on after observing, so every task is observed while all run.
    work : callable, optional
        Run before observing (e.g. a matmul, so pools really start threads).

    Returns
    -------
    Probe
    """
    import psutil

    if work is not None:
        work()
    variables = {v for lib in THREAD_LIBRARIES for v in lib.env_vars}
    variables.add(MAX_CPU_COUNT_VAR)
    result = Probe(
        pid=os.getpid(),
        thread=threading.get_native_id(),
        budget=current_budget(),
        pools=_pools_by_api(),
        env={v: os.environ[v] for v in sorted(variables) if v in os.environ},
        os_threads=psutil.Process().num_threads(),
    )
    if barrier is not None:
        barrier.wait()
    return result


def _pools_by_api() -> dict[str, int]:
    """``num_threads`` per internal API; the largest where several are loaded."""
    pools: dict[str, int] = {}
    for info in threadpool_info():
        api = info["internal_api"]
        pools[api] = max(pools.get(api, 0), info["num_threads"])
    return pools


class FileBarrier:
    """A barrier for ``parties`` tasks in any processes, through a directory.

    Each task adds a file and waits until ``parties`` files exist.

    Parameters
    ----------
    directory : path-like
        An existing, empty directory shared by the tasks.
    parties : int
        How many tasks must arrive.
    timeout : float, default=60
        Seconds before :meth:`wait` gives up with ``TimeoutError``.
    """

    def __init__(self, directory: str | os.PathLike, parties: int, timeout=60.0):
        self.directory = Path(directory)
        self.parties = parties
        self.timeout = timeout

    def wait(self) -> None:
        """Arrive, and wait for the others."""
        (self.directory / uuid.uuid4().hex).touch()
        deadline = time.monotonic() + self.timeout
        while len(list(self.directory.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(list(self.directory.iterdir()))} of {self.parties} "
                    f"tasks reached the barrier in {self.directory}"
                )
            time.sleep(0.005)


def host_tokens(n_cpus: int) -> dict:
    """The host-wide token source a call planning ``n_cpus`` would use now.

    Returns
    -------
    dict
        ``source``: :meth:`budgeted.hostwide.TokenSource.describe` (kind,
        path or jobserver, tokens in use and, for a ledger, by which PIDs),
        or None for local budgets; ``warnings``: why a named jobserver or
        ledger cannot be used.
    """
    import warnings

    from .hostwide import tokens_for_this_process

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = tokens_for_this_process(n_cpus)
    described = None if source is None else source.describe()
    return {"source": described, "warnings": [str(w.message) for w in caught]}


def jobserver_jobs() -> int | None:
    """make's ``-jN`` when this process runs under a jobserver, else None."""
    from .hostwide.makeflags import find_jobserver

    try:
        auth = find_jobserver(os.environ)
    except ValueError:
        return None
    return None if auth is None else auth.jobs


def host_token_lines(report: dict) -> list[str]:
    """What ``python -m budgeted info`` prints about :func:`host_tokens`."""
    lines = [f"host tokens: warning: {w}" for w in report["warnings"]]
    source = report["source"]
    if source is None:
        return [*lines, "host tokens: none (local budgets only)"]
    if source["kind"] == "ledger":
        holders = ", ".join(f"pid {p}: {n}" for p, n in source["holders"].items())
        free = source["tokens"] - source["in_use"]
        lines.append(
            f"host tokens: ledger {source['path']}: {source['tokens']} tokens,"
            f" {source['in_use']} in use" + (f" ({holders})" if holders else "")
        )
        lines += _waiting_lines(source)
        lines.append(f"  this program's share now: up to {max(free, 0)} CPUs")
        return lines
    jobs = "" if source["jobs"] is None else f", -j{source['jobs']}"
    lines.append(
        f"host tokens: jobserver {source['where']} ({source['variable']}{jobs},"
        f" {source['style']} style): {source['free']} tokens free"
    )
    lines += _waiting_lines(source)
    share = 1 + (source["free"] or 0)
    lines.append(f"  this program's share now: up to {share} CPUs (1 implicit)")
    return lines


def _waiting_lines(source: dict) -> list[str]:
    """The budgeted programs waiting in the source's queue, if any."""
    waiting = source.get("waiting") or {}
    if not waiting:
        return []
    queue = ", ".join(f"pid {p}: {n}" for p, n in waiting.items())
    return [f"  programs waiting, fewest CPUs held first: {queue}"]
