"""The workloads: what each benchmark run computes, sized by a ``scale``.

A :class:`Workload` has a ``setup(scale)`` that builds its inputs once per
process and a ``run(state, variant)`` that does one timed run under the
joblib configuration in force (set by :mod:`benchmarks.variants`). At
``scale=1`` each takes 0.5-3 s sequentially on 2 cores; ``--quick`` uses a
smaller scale. Tasks build their own matrices from a seed, so no large array
travels to workers (the memmapping cost is not what is measured).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joblib import Parallel, delayed

from .common import lookup

__all__ = ["DEFAULT_WORKLOADS", "WORKLOADS", "Workload", "get_workload"]

#: The variants every workload runs under.
STANDARD = (
    "sequential",
    "loky",
    "threading",
    "multiprocessing",
    "budgeted",
    "budgeted-threads",
)


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    Attributes
    ----------
    name : str
        Short identifier (``--workloads`` value, JSON key).
    title : str
        Human description, a format string filled from ``sizes(scale)``.
    sizes : callable
        ``sizes(scale) -> dict`` of the numbers that size the workload.
    setup : callable
        ``setup(sizes) -> state``, run once per process, untimed.
    run : callable
        ``run(state, variant) -> object``, one timed run.
    variants : tuple of str
        Names of the variants to run it under.
    """

    name: str
    title: str
    sizes: Callable[[float], dict]
    setup: Callable[[dict], Any]
    run: Callable[[Any, Any], object]
    variants: tuple[str, ...] = STANDARD

    def describe(self, scale: float) -> str:
        """The title with the sizes used at ``scale``."""
        return self.title.format(**self.sizes(scale))

    def prepare(self, scale: float) -> Any:
        """Build the inputs for ``scale`` (``setup(sizes(scale))``)."""
        return self.setup(self.sizes(scale))


def _sized(base: int, scale: float, lowest: int = 1) -> int:
    return max(lowest, round(base * scale))


# -- BLAS tasks -----------------------------------------------------------------
def matmuls(seed: int, n: int, repeats: int) -> float:
    """Multiply an ``n x n`` random matrix by itself ``repeats`` times (BLAS)."""
    import numpy as np

    a = np.random.default_rng(seed).standard_normal((n, n))
    return float(sum((a @ a)[0, 0] for _ in range(repeats)))


def _matmul_size(scale: float) -> int:
    return _sized(1500, scale**0.5, lowest=64)


def _blas_sizes(n_tasks: int, per_task: int) -> Callable[[float], dict]:
    def sizes(scale: float) -> dict:
        return {"n_tasks": n_tasks, "per_task": per_task, "n": _matmul_size(scale)}

    return sizes


def _blas_setup(sizes: dict) -> dict:
    return {"tasks": [(sizes["n"], sizes["per_task"])] * sizes["n_tasks"]}


def _large_small_sizes(scale: float) -> dict:
    n = _matmul_size(scale)
    return {"n": n, "small_n": n * 2 // 3, "large": 8, "n_small": 20}


def _large_small_setup(sizes: dict) -> dict:
    large = [(sizes["n"], sizes["large"])]
    return {"tasks": large + [(sizes["small_n"], 1)] * sizes["n_small"]}


def _blas_run(state: dict, variant) -> list[float]:
    calls = (
        delayed(matmuls)(seed, n, repeats)
        for seed, (n, repeats) in enumerate(state["tasks"])
    )
    return Parallel(n_jobs=2)(calls)


# -- scikit-learn -----------------------------------------------------------------
def _classification(n_samples: int, n_features: int):
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=10, random_state=0
    )


def _hgb_sizes(scale: float) -> dict:
    return {"n_samples": _sized(20_000, scale, lowest=300), "n_features": 30}


def _xy_setup(sizes: dict) -> dict:
    X, y = _classification(sizes["n_samples"], sizes["n_features"])
    return {"X": X, "y": y, **sizes}


def _hgb_run(state: dict, variant) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GridSearchCV

    estimator_class = (
        _hand_limited_hgb_class()
        if variant.omp_threads_per_task
        else HistGradientBoostingClassifier
    )
    grid = {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]}
    search = GridSearchCV(
        estimator_class(max_iter=50, random_state=0), grid, cv=3, n_jobs=2
    )
    return search.fit(state["X"], state["y"]).best_score_


_HAND_LIMITED: dict[str, type] = {}
_OPENMP: list = []
_OPENMP_LOCK = threading.Lock()


def _openmp_controller():
    """threadpoolctl's OpenMP pools, scanned once (the scan is costly)."""
    with _OPENMP_LOCK:
        if not _OPENMP:
            from threadpoolctl import ThreadpoolController

            _OPENMP.append(ThreadpoolController().select(user_api="openmp"))
        return _OPENMP[0]


def _one_openmp_thread_off_main():
    """1 OpenMP thread in worker threads; the main thread (refit) keeps all."""
    if threading.current_thread() is threading.main_thread():
        from contextlib import nullcontext

        return nullcontext()
    return _openmp_controller().limit(limits=1)


def _hand_limited_hgb_class() -> type:
    """HistGradientBoostingClassifier whose fit/predict use 1 OpenMP thread.

    The "physical target" of thread mode (DESIGN.md): joblib's ``threading``
    backend with each thread limited to 1 OpenMP thread by hand. OpenMP
    limits are per calling thread, so this is set inside the task.
    """
    if "hgb" not in _HAND_LIMITED:
        from sklearn.ensemble import HistGradientBoostingClassifier

        class OneThreadHGB(HistGradientBoostingClassifier):
            def fit(self, X, y, **kwargs):
                with _one_openmp_thread_off_main():
                    return super().fit(X, y, **kwargs)

            def predict(self, X):
                with _one_openmp_thread_off_main():
                    return super().predict(X)

        _HAND_LIMITED["hgb"] = OneThreadHGB
    return _HAND_LIMITED["hgb"]


def _forest_sizes(scale: float) -> dict:
    return {
        "n_samples": _sized(8_000, scale, lowest=200),
        "n_features": 20,
        "n_estimators": _sized(40, scale**0.5, lowest=4),
    }


def _forest_run(state: dict, variant) -> float:
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=state["n_estimators"], n_jobs=2, random_state=0
    )
    return forest.fit(state["X"], state["y"]).score(state["X"], state["y"])


# -- many tiny tasks ----------------------------------------------------------------
def tiny(seed: int, work: int = 3000) -> int:
    """About 0.2 ms of pure-Python arithmetic (holds the GIL)."""
    return sum(i * i for i in range(seed % 7, work))


def _tiny_sizes(scale: float) -> dict:
    return {"n_tasks": _sized(10_000, scale, lowest=50)}


def _tiny_run(state: dict, variant) -> int:
    calls = (delayed(tiny)(i) for i in range(state["n_tasks"]))
    return sum(Parallel(n_jobs=2)(calls))


# -- nested ------------------------------------------------------------------------
def inner_blas(seed: int, n: int, n_tasks: int) -> float:
    """An inner ``Parallel(n_jobs=-1)`` of BLAS tasks, run inside a task."""
    calls = (delayed(matmuls)(seed * 100 + j, n, 2) for j in range(n_tasks))
    return sum(Parallel(n_jobs=-1)(calls))


def _nested_sizes(scale: float) -> dict:
    return {"n": _sized(1000, scale**0.5, lowest=48), "outer": 4, "inner": 4}


def _nested_run(state: dict, variant) -> float:
    calls = (
        delayed(inner_blas)(seed, state["n"], state["inner"])
        for seed in range(state["outer"])
    )
    return sum(Parallel(n_jobs=2)(calls))


# -- a workload that never ends (checks the time limit; not in the default set) --
def _stall_setup(sizes: dict) -> dict:
    import numpy as np

    return {"array": np.zeros(1_000_000)}  # 8 MB: memory-mapped for workers


def _stall_run(state: dict, variant) -> None:
    Parallel(n_jobs=2)(delayed(_sleep_on)(state["array"]) for _ in range(2))


def _sleep_on(array) -> None:
    time.sleep(3600)


def _no_sizes(scale: float) -> dict:
    return {}


def _same(sizes: dict) -> dict:
    return sizes


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "blas_uniform",
            "{n_tasks} uniform BLAS tasks ({per_task} matmuls {n}x{n} each), n_jobs=2",
            _blas_sizes(8, 2),
            _blas_setup,
            _blas_run,
        ),
        Workload(
            "blas_tail3",
            "{n_tasks} BLAS tasks ({per_task} matmuls {n}x{n} each) on n_jobs=2",
            _blas_sizes(3, 4),
            _blas_setup,
            _blas_run,
        ),
        Workload(
            "blas_large_small",
            "1 large BLAS task ({large} matmuls {n}x{n}) + {n_small} small "
            "(1 matmul {small_n}x{small_n}), n_jobs=2",
            _large_small_sizes,
            _large_small_setup,
            _blas_run,
        ),
        Workload(
            "hgb_grid",
            "GridSearchCV(HistGradientBoostingClassifier(max_iter=50)), "
            "4 candidates, cv=3, n_jobs=2, {n_samples} x {n_features} (OpenMP)",
            _hgb_sizes,
            _xy_setup,
            _hgb_run,
            STANDARD + ("threading-omp1",),
        ),
        Workload(
            "random_forest",
            "RandomForestClassifier(n_estimators={n_estimators}, n_jobs=2).fit, "
            "{n_samples} x {n_features}",
            _forest_sizes,
            _xy_setup,
            _forest_run,
        ),
        Workload(
            "tiny_tasks",
            "{n_tasks} tiny tasks (~0.2 ms of pure Python each), n_jobs=2",
            _tiny_sizes,
            _same,
            _tiny_run,
        ),
        Workload(
            "nested_blas",
            "outer Parallel(n_jobs=2) of {outer} tasks, each an inner "
            "Parallel(n_jobs=-1) of {inner} BLAS tasks (2 matmuls {n}x{n})",
            _nested_sizes,
            _same,
            _nested_run,
        ),
        Workload(
            "stall",
            "2 tasks that sleep for an hour (checks the time limit)",
            _no_sizes,
            _stall_setup,
            _stall_run,
            ("multiprocessing",),
        ),
    )
}

#: What ``python -m benchmarks`` runs when ``--workloads`` is not given.
DEFAULT_WORKLOADS = tuple(name for name in WORKLOADS if name != "stall")


def get_workload(name: str) -> Workload:
    """Return the workload called ``name`` (a :class:`ValueError` if unknown)."""
    return lookup(WORKLOADS, name, "workload")
