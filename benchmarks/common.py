"""Shared helpers for every benchmark: timing, tables, results and machine facts.

::

    from benchmarks.common import Timing, measure, ratio_table, save_results
    t = measure("loky", fn, repeats=5, warmup=1)
    print(ratio_table([t1, t2], title="3 BLAS tasks"))
    save_results("blas", {"timings": [t.as_dict() for t in (t1, t2)]})
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "Timing",
    "lookup",
    "machine_info",
    "measure",
    "ratio_table",
    "save_results",
    "time_once",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

_VERSIONED = ("numpy", "joblib", "loky", "threadpoolctl", "scikit-learn", "budgeted")
_NOTED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LOKY_MAX_CPU_COUNT")


@dataclass
class Timing:
    """Wall-clock times of one variant of a benchmark.

    Parameters
    ----------
    label : str
        Name of the variant (e.g. ``"loky"``).
    times : list of float
        Seconds per timed run. Empty when the variant did not finish.
    extra : dict
        Free-form facts about the variant (e.g. ``{"status": "hung"}``).
    """

    label: str
    times: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        """Median time in seconds (``nan`` without times)."""
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def min(self) -> float:
        """Fastest time in seconds (``nan`` without times)."""
        return min(self.times) if self.times else float("nan")

    @property
    def max(self) -> float:
        """Slowest time in seconds (``nan`` without times)."""
        return max(self.times) if self.times else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict with the raw times and their summary."""
        summary = {"median": self.median, "min": self.min, "max": self.max}
        clean = {k: (None if v != v else v) for k, v in summary.items()}
        return {**asdict(self), **clean}


def measure(
    label: str, fn: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed runs.

    Parameters
    ----------
    label : str
        Name of the variant.
    fn : callable
        One run of the benchmark, called with no arguments.
    repeats : int, default=5
        Number of timed runs (at least 1).
    warmup : int, default=1
        Number of untimed runs before (at least 0).

    Returns
    -------
    Timing
    """
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    for _ in range(warmup):
        fn()
    timing = Timing(label)
    for _ in range(repeats):
        timing.times.append(time_once(fn))
    return timing


def time_once(fn: Callable[[], object]) -> float:
    """Return the wall-clock seconds one call ``fn()`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _check_count(name: str, value: object, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be >= {lowest}, got {value!r}")


def ratio_table(timings: Iterable[Timing], title: str = "") -> str:
    """Return a markdown table of medians, extremes and ratios to the best.

    Parameters
    ----------
    timings : iterable of Timing
        The variants, in display order. A variant without times (e.g. one
        that hung) shows its ``extra["status"]`` instead of numbers.
    title : str, default=""
        Printed as a ``###`` heading above the table when not empty.

    Returns
    -------
    str
        The table; ``x best`` is each median divided by the best median.
    """
    timings = list(timings)
    medians = [t.median for t in timings if t.times]
    best = min(medians) if medians else float("nan")
    lines = [f"### {title}", ""] if title else []
    lines += ["| label | median s | min | max | x best |", "|---|---:|---:|---:|---:|"]
    for t in timings:
        lines.append(_table_row(t, best))
    return "\n".join(lines)


def _table_row(t: Timing, best: float) -> str:
    if not t.times:
        status = t.extra.get("status", "no result")
        return f"| {t.label} | {status} | | | |"
    ratio = t.median / best if best > 0 else float("nan")
    return f"| {t.label} | {t.median:.3f} | {t.min:.3f} | {t.max:.3f} | {ratio:.2f} |"


def save_results(
    name: str, payload: dict[str, Any], out_dir: Path | None = None
) -> Path:
    """Write ``payload`` plus :func:`machine_info` to ``<out_dir>/<name>.json``.

    Parameters
    ----------
    name : str
        File stem, e.g. ``"blas"``.
    payload : dict
        JSON-serialisable results; :class:`Timing` values are converted.
    out_dir : path, optional
        Folder (created if missing); defaults to ``benchmarks/results/``.

    Returns
    -------
    Path
        The file written.
    """
    if not isinstance(name, str) or not name or os.sep in name:
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    document = {"name": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(document, indent=2, default=_to_json) + "\n")
    return path


def _to_json(obj: object) -> object:
    if isinstance(obj, Timing):
        return obj.as_dict()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def machine_info() -> dict[str, Any]:
    """Describe this machine: cores, CPU model, versions and native pools.

    Returns
    -------
    dict
        ``cpu_count``, ``usable_cpus``, ``cpu_model``, ``python``, ``platform``,
        ``versions`` (numpy, joblib, loky, threadpoolctl, scikit-learn,
        budgeted), ``thread_pools`` (threadpoolctl, after importing numpy and
        scikit-learn's OpenMP code when available) and ``env`` (the
        OpenBLAS/loky variables that change speed, when set), ``load_average``
        (1, 5 and 15 minutes, when the results are saved: other processes).
    """
    from budgeted import usable_cpus

    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in _VERSIONED},
        "thread_pools": _thread_pools(),
        "env": {k: os.environ[k] for k in _NOTED_ENV if k in os.environ},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _thread_pools() -> list[dict[str, Any]]:
    import numpy  # noqa: F401  (loads OpenBLAS)
    from threadpoolctl import threadpool_info

    with contextlib.suppress(ImportError):
        import sklearn.ensemble  # noqa: F401  (loads OpenMP)
    keys = ("user_api", "internal_api", "version", "num_threads", "architecture")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or a :class:`ValueError` naming ``what`` and the known names."""
    try:
        return table[name]
    except KeyError:
        known = ", ".join(table)
        raise ValueError(f"unknown {what} {name!r}; known: {known}") from None
