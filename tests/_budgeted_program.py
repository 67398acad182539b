"""A real budgeted program: ``Parallel(n_jobs=-1)`` whose tasks log their budget.

Run as ``python _budgeted_program.py LOG_DIR NAME N_CPUS TASKS SECONDS MODE``:
``Parallel(n_jobs=-1)`` under ``parallel_config("budgeted", n_cpus=N_CPUS,
prefer=MODE)`` runs TASKS tasks; each burns SECONDS of CPU in a BLAS-free
loop and appends ``{"name", "pid", "start", "end", "budget"}`` to
``LOG_DIR/NAME.jsonl``: ``start`` once its budget is in force (its CPUs are
held), ``end`` before they are given back, ``time.monotonic()`` (one clock for
every process), ``budget`` what :func:`budgeted.current_budget` says in the
task. ``tests/_token_program.max_together(records, "budget")`` then checks
the sum of budgets at every instant.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def task(log: str, name: str, seconds: float) -> int:
    import budgeted

    start, budget = time.monotonic(), budgeted.current_budget()
    while time.monotonic() - start < seconds:
        pass  # one busy CPU, whatever the budget
    record = {"name": name, "pid": os.getpid(), "budget": budget}
    record.update(start=start, end=time.monotonic())
    with open(Path(log) / f"{name}.jsonl", "a") as out:
        out.write(json.dumps(record) + "\n")
    return budget


def main(argv: list[str]) -> None:
    from joblib import Parallel, delayed, parallel_config

    import budgeted  # noqa: F401 - registers the backend

    log, name, n_cpus, tasks, seconds, mode = argv
    with parallel_config("budgeted", n_cpus=int(n_cpus), prefer=mode):
        Parallel(n_jobs=-1)(
            delayed(task)(log, name, float(seconds)) for _ in range(int(tasks))
        )


if __name__ == "__main__":
    main(sys.argv[1:])
