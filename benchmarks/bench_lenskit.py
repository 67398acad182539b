"""A large model, many small calls: ``budgeted.lenskit.invoker`` against joblib.

Run: ``python -m benchmarks.bench_lenskit [--quick] [--repeats N]``.

The model is a float64 matrix (5000 x 5000, 200 MB; 1000 x 1000 with
``--quick``); each call multiplies a block of 50 of its rows by a vector, 1000
calls (200 quick). Variants, all on 2 worker processes except ``sequential``:

* ``invoker``: the model pickled once into one shared memory segment, loaded
  zero-copy by each worker once; the pool is started and stopped in each run.
* ``joblib-memmap``: ``Parallel(n_jobs=2)(delayed(func)(model, x) ...)`` with
  loky. joblib *auto-memmaps* arguments above ``max_nbytes`` (1 MB): the model
  is dumped once per ``Parallel`` call to a file in ``/dev/shm`` that workers
  map. loky keeps its workers between runs, so later runs skip their start.
* ``joblib-pickle``: the same with ``max_nbytes=None``: the model is pickled
  into every batch of tasks joblib sends (auto-batching groups tasks, so not
  once per call, but many times).
* ``sequential``: every call in this process.

Peak memory is sampled by a thread every 50 ms over this process and all its
children (workers, resource trackers): the sums of RSS (counts shared pages
once per process), USS (pages private to each process) and PSS (shared pages
split between their users: the honest total).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
from joblib import Parallel, delayed

from benchmarks.common import Timing, measure, ratio_table, save_results
from budgeted.lenskit import initialize, invoker

BLOCK_ROWS = 50
N_JOBS = 2
SIZES = {"full": (5000, 1000), "quick": (1000, 200)}


def block_product(model: np.ndarray, i: int, v: np.ndarray) -> np.ndarray:
    """One call: a block of ``BLOCK_ROWS`` rows of the model times ``v``."""
    start = (i * BLOCK_ROWS) % (model.shape[0] - BLOCK_ROWS + 1)
    return model[start : start + BLOCK_ROWS] @ v


class PeakMemory:
    """Peak summed RSS, USS and PSS of this process and its children (MB)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = {"rss": 0.0, "uss": 0.0, "pss": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def _sample(self) -> None:
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
        totals = dict.fromkeys(self.peak, 0.0)
        for process in processes:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for key in totals:
                totals[key] += getattr(info, key) / 2**20
        for key, value in totals.items():
            self.peak[key] = max(self.peak[key], value)


def variants(model: np.ndarray, n_calls: int) -> dict[str, Callable[[], float]]:
    """Each variant: one run of every call, returning a checksum."""
    v = np.ones(model.shape[1])
    items = range(n_calls)

    def with_invoker() -> float:
        with invoker(model, block_product, n_jobs=N_JOBS) as inv:
            return float(sum(r.sum() for r in inv.map(items, [v] * n_calls)))

    def with_joblib(**kwargs) -> Callable[[], float]:
        def run() -> float:
            tasks = (delayed(block_product)(model, i, v) for i in items)
            results = Parallel(n_jobs=N_JOBS, backend="loky", **kwargs)(tasks)
            return float(sum(r.sum() for r in results))

        return run

    def sequential() -> float:
        return float(sum(block_product(model, i, v).sum() for i in items))

    return {
        "invoker": with_invoker,
        "joblib-memmap": with_joblib(),
        "joblib-pickle": with_joblib(max_nbytes=None),
        "sequential": sequential,
    }


def run(size: int, n_calls: int, repeats: int) -> tuple[list[Timing], dict]:
    """Time every variant and record its peak memory."""
    model = np.random.default_rng(0).standard_normal((size, size))
    timings, checksums = [], {}
    for label, fn in variants(model, n_calls).items():
        print(f"running {label}...", file=sys.stderr, flush=True)
        with PeakMemory() as memory:
            timing = measure(label, fn, repeats=repeats, warmup=0)
        checksums[label] = fn()
        timing.extra.update({f"peak_{k}_mb": round(v) for k, v in memory.peak.items()})
        timings.append(timing)
    reference = checksums["sequential"]
    for label, value in checksums.items():
        if not np.isclose(value, reference):
            raise AssertionError(f"{label} computed {value}, sequential {reference}")
    return timings, {"model_mb": model.nbytes / 2**20, "n_calls": n_calls}


def memory_table(timings: list[Timing]) -> str:
    lines = [
        "| label | peak RSS sum MB | peak USS sum MB | peak PSS sum MB |",
        "|---|---:|---:|---:|",
    ]
    for t in timings:
        e = t.extra
        lines.append(
            f"| {t.label} | {e['peak_rss_mb']} | {e['peak_uss_mb']} "
            f"| {e['peak_pss_mb']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 1 run")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    size, n_calls = SIZES["quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.quick else 3)
    initialize(processes=N_JOBS, child_threads=1)
    started = time.perf_counter()
    timings, facts = run(size, n_calls, repeats)
    title = (
        f"{facts['model_mb']:.0f} MB model, {n_calls} calls of a "
        f"{BLOCK_ROWS}-row block product, {N_JOBS} processes"
    )
    print(ratio_table(timings, title=title))
    print()
    print(memory_table(timings))
    name = "lenskit_quick" if args.quick else "lenskit"
    facts["total_seconds"] = time.perf_counter() - started
    path = save_results(name, {**facts, "repeats": repeats, "timings": timings})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
