"""A large model, many small calls: ``budgeted.lenskit.invoker`` against joblib.

Run: ``python -m benchmarks.bench_lenskit [--quick] [--repeats N]``.

The model is a float64 matrix (5000 x 5000, 200 MB; 1000 x 1000 with
``--quick``); each call multiplies a block of 500 of its rows (100 quick) by a
vector, 1000 calls (200 quick). Variants, all on 2 worker processes (one BLAS
thread each) except ``sequential`` (this process, BLAS on every usable CPU):

* ``invoker``: the model pickled once into one shared memory segment, loaded
  zero-copy by each worker once; the pool is started and stopped in each run.
* ``invoker-warm``: the same invoker reused for every run (see below).
* ``joblib-memmap``: ``Parallel(n_jobs=2)(delayed(func)(model, x) ...)`` with
  loky. joblib *auto-memmaps* arguments above ``max_nbytes`` (1 MB): the model
  is dumped once per ``Parallel`` call to a file in ``/dev/shm`` that workers
  map. loky keeps its workers between runs, so later runs skip their start.
* ``joblib-pickle``: the same with ``max_nbytes=None``: the model is pickled
  into every batch of tasks joblib sends (auto-batching groups tasks, but the
  batches stay small because each is slow). So slow (about 2 s per call for
  200 MB on a loaded 2-core machine) that it runs only ``PICKLE_CALLS`` calls,
  once: compare it in the per-call table.
* ``sequential``: every call in this process.

Each timed run of ``invoker`` includes starting its workers (a pool for its
model); ``invoker-warm`` reuses one invoker started in an untimed first run;
joblib starts loky's executor in its first run and reuses it after, so its
median is a warm run.

Peak memory is sampled by a thread every 50 ms over this process and all its
children (workers, resource trackers): the sums of RSS (counts shared pages
once per process), USS (pages private to each process) and PSS (shared pages
split between their users), and the bytes of this run's files in ``/dev/shm``
(joblib's memmap folders, the invoker's segment): tmpfs pages that no process
maps are in no process's PSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from joblib import Parallel, delayed

from benchmarks.common import Timing, measure, ratio_table, save_results
from budgeted import usable_cpus
from budgeted.lenskit import initialize, invoker

N_JOBS = 2
#: (matrix size, calls) of each run size; a call takes a tenth of the rows.
SIZES = {"full": (5000, 1000), "quick": (1000, 200)}
#: Calls of the ``joblib-pickle`` variant (it pickles the model per batch).
PICKLE_CALLS = {"full": 20, "quick": 50}
SHM = Path("/dev/shm")


def block_product(model: np.ndarray, i: int, v: np.ndarray) -> np.ndarray:
    """One call: the ``i``-th block of ``len(v) // 10`` rows times ``v``."""
    rows = len(v) // 10
    start = (i * rows) % (model.shape[0] - rows + 1)
    return model[start : start + rows] @ v


class PeakMemory:
    """Peak summed RSS, USS, PSS of this process and its children, and peak
    bytes of this process's files in ``/dev/shm`` (all in MB)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = {"rss": 0.0, "uss": 0.0, "pss": 0.0, "shm": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def _sample(self) -> None:
        me = psutil.Process()
        totals = dict.fromkeys(self.peak, 0.0)
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for key in ("rss", "uss", "pss"):
                totals[key] += getattr(info, key) / 2**20
        totals["shm"] = _own_shm_bytes(me.pid) / 2**20
        for key, value in totals.items():
            self.peak[key] = max(self.peak[key], value)


def _own_shm_bytes(pid: int) -> int:
    """Bytes of the /dev/shm entries named after ``pid`` (joblib's, ours)."""
    total = 0
    for entry in SHM.iterdir():
        if f"_{pid}_" not in entry.name and f"-{pid}-" not in entry.name:
            continue
        paths = entry.rglob("*") if entry.is_dir() else [entry]
        for path in paths:
            try:
                total += path.stat().st_blocks * 512  # tmpfs pages in use
            except OSError:  # removed meanwhile
                continue
    return total


def variants(model: np.ndarray) -> dict[str, Callable[[int], float]]:
    """Each variant: ``n_calls`` calls, returning a checksum."""
    v = np.ones(model.shape[1])

    def with_invoker(n_calls: int) -> float:
        with invoker(model, block_product, n_jobs=N_JOBS) as inv:
            return float(sum(r.sum() for r in inv.map(range(n_calls), [v] * n_calls)))

    def with_joblib(**kwargs) -> Callable[[int], float]:
        def run(n_calls: int) -> float:
            tasks = (delayed(block_product)(model, i, v) for i in range(n_calls))
            results = Parallel(n_jobs=N_JOBS, backend="loky", **kwargs)(tasks)
            return float(sum(r.sum() for r in results))

        return run

    def sequential(n_calls: int) -> float:
        return float(sum(block_product(model, i, v).sum() for i in range(n_calls)))

    return {
        "invoker": with_invoker,
        "invoker-warm": _WarmInvoker(model, v),
        "joblib-memmap": with_joblib(),
        "joblib-pickle": with_joblib(max_nbytes=None),
        "sequential": sequential,
    }


class _WarmInvoker:
    """One invoker started by the first (untimed) call, reused by the next."""

    def __init__(self, model: np.ndarray, v: np.ndarray) -> None:
        self.model, self.v, self.invoker = model, v, None
        self.warmup = 1

    def __call__(self, n_calls: int) -> float:
        if self.invoker is None:
            self.invoker = invoker(self.model, block_product, n_jobs=N_JOBS)
        results = self.invoker.map(range(n_calls), [self.v] * n_calls)
        return float(sum(r.sum() for r in results))

    def close(self) -> None:
        if self.invoker is not None:
            self.invoker.shutdown()


def run(size: int, n_calls: int, pickle_calls: int, repeats: int) -> list[Timing]:
    """Time every variant, record its peak memory, check its results."""
    model = np.random.default_rng(0).standard_normal((size, size))
    timings = []
    for label, fn in variants(model).items():
        slow = label == "joblib-pickle"
        calls, runs = (pickle_calls, 1) if slow else (n_calls, repeats)
        print(f"running {label} ({calls} calls)...", file=sys.stderr, flush=True)
        warmup = getattr(fn, "warmup", 0)
        with PeakMemory() as memory:
            timing = measure(label, lambda fn=fn, c=calls: fn(c), runs, warmup=warmup)
        timing.extra["calls"] = calls
        timing.extra["checksum"] = fn(calls)
        if hasattr(fn, "close"):
            fn.close()
        timing.extra.update({f"peak_{k}_mb": round(v) for k, v in memory.peak.items()})
        timings.append(timing)
    reference = variants(model)["sequential"]
    for t in timings:
        expected = reference(t.extra["calls"])
        if not np.isclose(t.extra["checksum"], expected):
            raise AssertionError(f"{t.label}: {t.extra['checksum']} != {expected}")
    return timings


def per_call_table(timings: list[Timing]) -> str:
    lines = [
        "| label | calls | ms per call | peak RSS sum MB | peak USS sum MB "
        "| peak PSS sum MB | peak /dev/shm MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        e = t.extra
        lines.append(
            f"| {t.label} | {e['calls']} | {1000 * t.median / e['calls']:.2f} "
            f"| {e['peak_rss_mb']} | {e['peak_uss_mb']} | {e['peak_pss_mb']} "
            f"| {e['peak_shm_mb']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 1 run")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    (size, n_calls), pickle_calls = SIZES[mode], PICKLE_CALLS[mode]
    repeats = args.repeats or (1 if args.quick else 3)
    initialize(
        processes=N_JOBS, threads=1, backend_threads=usable_cpus(), child_threads=1
    )
    started = time.perf_counter()
    timings = run(size, n_calls, pickle_calls, repeats)
    title = (
        f"{size * size * 8 / 2**20:.0f} MB model, {n_calls} calls of a "
        f"{size // 10}-row block product, {N_JOBS} processes"
    )
    print(ratio_table([t for t in timings if t.label != "joblib-pickle"], title))
    print()
    print(per_call_table(timings))
    facts = {"size": size, "n_calls": n_calls, "repeats": repeats, "pid": os.getpid()}
    facts["total_seconds"] = time.perf_counter() - started
    name = "lenskit_quick" if args.quick else "lenskit"
    path = save_results(name, {**facts, "timings": timings})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
