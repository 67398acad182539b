"""A program that runs tasks on host-wide tokens and logs when each ran.

Run as ``python _token_program.py LOG_DIR NAME THREADS TASKS SECONDS``: THREADS
threads run TASKS tasks of SECONDS each. A task runs on the program's implicit
token when it is free (a jobserver's; a ledger has none), else on a token it
waits for (``acquire(1, block=True)``),
as the backend will per batch. Each task appends ``{"name", "pid", "start",
"end", "token"}`` (``time.monotonic()``, the same clock in every process) to
``LOG_DIR/NAME.jsonl``, ``start`` after its token is held and ``end`` before it
is given back. ``BUDGETED_TEST_N_CPUS`` sizes a ledger (the default: usable CPUs).
Also importable: :func:`max_together` checks the logs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def _source():
    from budgeted import hostwide

    n_cpus = os.environ.get("BUDGETED_TEST_N_CPUS")
    return hostwide.choose_source(n_cpus=int(n_cpus) if n_cpus else None)


class _Program:
    def __init__(self, log: Path, name: str, tasks: int, seconds: float) -> None:
        self.log, self.name, self.seconds = log, name, seconds
        self.source = _source()
        self.lock = threading.Lock()
        self.implicit_free = True
        self.left = tasks

    def _take(self) -> str | None:
        """A token for the next task, or None when no task is left.

        Waits in short steps so that a waiting thread also sees the implicit
        token come free (the real backend will know this from its own count).
        """
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self.lock:
                if self.left <= 0:
                    return None
                if self.implicit_free and getattr(self.source, "implicit", True):
                    self.implicit_free, self.left = False, self.left - 1
                    return "implicit"
            if self.source is None:
                time.sleep(0.01)  # local budgets: only the implicit token
            elif self.source.acquire(1, True, 0.05):
                with self.lock:
                    if self.left > 0:
                        self.left -= 1
                        return "extra"
                self.source.release(1)
                return None
        raise RuntimeError("no token within 60 s")

    def _give(self, token: str) -> None:
        if token == "implicit":
            with self.lock:
                self.implicit_free = True
        else:
            self.source.release(1)

    def run_tasks(self) -> None:
        while (token := self._take()) is not None:
            start = time.monotonic()
            time.sleep(self.seconds)  # the work: a task holding one CPU
            record = {"name": self.name, "pid": os.getpid(), "token": token}
            record.update(start=start, end=time.monotonic())
            with self.lock, open(self.log / f"{self.name}.jsonl", "a") as out:
                out.write(json.dumps(record) + "\n")
            self._give(token)


def read_logs(log: Path) -> list[dict]:
    """Every task record under ``log``."""
    return [
        json.loads(line)
        for path in sorted(log.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def max_together(records: list[dict], weight: str | None = None) -> int:
    """The largest number of tasks (or sum of ``weight``) at one instant.

    Ends come first on ties: a task that ends as another starts never
    counts with it.
    """

    def size(record: dict) -> int:
        return 1 if weight is None else int(record[weight])

    events = sorted(
        [(r["start"], size(r)) for r in records]
        + [(r["end"], -size(r)) for r in records],
        key=lambda event: (event[0], event[1]),
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def main(argv: list[str]) -> None:
    log, name, threads, tasks, seconds = argv
    program = _Program(Path(log), name, int(tasks), float(seconds))
    workers = [threading.Thread(target=program.run_tasks) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main(sys.argv[1:])
