"""One program of the host-wide benchmark (:mod:`benchmarks.bench_hostwide`).

Started by the driver (or by ``make``) as a separate ``python`` process::

    python -m benchmarks.hostwide_program run --workload hgb --backend budgeted
    python -m benchmarks.hostwide_program serve-tiny --backend budgeted

``run`` does one workload with ``n_jobs=-1`` and prints one JSON line (to
stdout, or to ``--out FILE``): wall-clock epochs of its start (before the
heavy imports), of the start of the work and of its end. ``serve-tiny``
keeps a warm executor and answers ``run`` lines on stdin with the seconds
10^4 tiny tasks took (``Parallel(n_jobs=2)``), for the per-batch overhead;
``run ledger-on`` and ``run ledger-off`` switch budgeted's host ledger per
call, on the same workers.
Which host-wide tokens budgeted uses comes from the environment the driver
sets (``BUDGETED_LEDGER``, ``BUDGETED_JOBSERVER``, ``MAKEFLAGS``).
"""

from __future__ import annotations

import time

_STARTED = time.time()  # before numpy, scikit-learn and joblib are imported

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

__all__ = ["main"]

WORKLOADS = ("hgb", "blas")
BACKENDS = ("loky", "budgeted")
#: Sizes of the standard benchmark's ``hgb_grid`` and ``blas_uniform`` at scale 1.
HGB_SAMPLES, HGB_FEATURES = 20_000, 30
BLAS_TASKS, BLAS_PER_TASK, BLAS_N = 8, 2, 1500
TINY_TASKS = 10_000


def _config(backend: str):
    from joblib import parallel_config

    if backend == "budgeted":
        import budgeted  # noqa: F401  (registers the backend)
    return parallel_config(backend=backend)


def hgb_grid(scale: float = 1.0, hold_refit: bool = False) -> float:
    """The ``hgb_grid`` workload with ``n_jobs=-1``: 4 candidates, cv=3.

    ``hold_refit``: the same work, with the refit of the best estimator (done
    by ``GridSearchCV`` in the main process, outside joblib) run under
    :func:`budgeted.hold_cpus` instead.
    """
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GridSearchCV

    from .workloads import _classification

    X, y = _classification(max(300, round(HGB_SAMPLES * scale)), HGB_FEATURES)
    grid = {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]}
    estimator = HistGradientBoostingClassifier(max_iter=50, random_state=0)
    search = GridSearchCV(estimator, grid, cv=3, n_jobs=-1, refit=not hold_refit)
    search.fit(X, y)
    if hold_refit:
        import budgeted

        with budgeted.hold_cpus():
            clone(estimator).set_params(**search.best_params_).fit(X, y)
    return float(search.best_score_)


def blas_uniform(scale: float = 1.0) -> float:
    """The ``blas_uniform`` workload with ``n_jobs=-1``: 8 tasks of 2 matmuls."""
    from joblib import Parallel, delayed

    from .workloads import matmuls

    n = max(64, round(BLAS_N * scale**0.5))
    calls = (delayed(matmuls)(seed, n, BLAS_PER_TASK) for seed in range(BLAS_TASKS))
    return float(sum(Parallel(n_jobs=-1)(calls)))


def tiny_tasks(n_tasks: int = TINY_TASKS, batch_size: int | str = "auto") -> int:
    """``n_tasks`` calls of ``abs`` on ``Parallel(n_jobs=2)``."""
    from joblib import Parallel, delayed

    calls = (delayed(abs)(-i) for i in range(n_tasks))
    return sum(Parallel(n_jobs=2, batch_size=batch_size)(calls))


def _run(args) -> int:
    with _config(args.backend):
        import numpy  # noqa: F401
        import sklearn  # noqa: F401

        began = time.time()
        if args.workload == "hgb":
            result = hgb_grid(args.scale, args.hold_refit)
        else:
            result = blas_uniform(args.scale)
    record = {
        "workload": args.workload,
        "backend": args.backend,
        "started": _STARTED,
        "began": began,
        "ended": time.time(),
        "result": result,
    }
    line = json.dumps(record)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    else:
        print(line, flush=True)
    return 0


def _serve_tiny(args) -> int:
    """Answer ``run`` (the environment's tokens) or ``run ledger-on`` /
    ``run ledger-off`` (budgeted with or without host tokens: one process,
    the same warm loky workers for both)."""
    from joblib import parallel_config

    batch_size = "auto" if args.batch_size == "auto" else int(args.batch_size)
    with _config(args.backend):
        tiny_tasks(args.tasks, batch_size)  # warm-up: start the workers
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        if len(words) > 1:
            config = parallel_config("budgeted", ledger=words[1] == "ledger-on")
        else:
            config = _config(args.backend)
        with config:
            start = time.perf_counter()
            tiny_tasks(args.tasks, batch_size)
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostwide_program")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="one workload, n_jobs=-1; print a JSON line")
    run.add_argument("--workload", choices=WORKLOADS, required=True)
    run.add_argument("--backend", choices=BACKENDS, required=True)
    run.add_argument("--scale", type=float, default=1.0)
    run.add_argument("--out", help="write the JSON line here instead of stdout")
    run.add_argument(
        "--hold-refit",
        action="store_true",
        help="hgb: refit the best estimator under budgeted.hold_cpus()",
    )
    serve = sub.add_parser("serve-tiny", help="time tiny tasks on request")
    serve.add_argument("--backend", choices=BACKENDS, required=True)
    serve.add_argument("--tasks", type=int, default=TINY_TASKS)
    serve.add_argument("--batch-size", default="auto", help="joblib's batch_size")
    args = parser.parse_args(argv)
    return _run(args) if args.cmd == "run" else _serve_tiny(args)


if __name__ == "__main__":
    sys.exit(main())
