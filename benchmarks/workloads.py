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
        Human description for tables and the plot.
    setup : callable
        ``setup(scale) -> state``, run once per process, untimed.
    run : callable
        ``run(state, variant) -> object``, one timed run.
    variants : tuple of str
        Names of the variants to run it under.
    """

    name: str
    title: str
    setup: Callable[[float], Any]
    run: Callable[[Any, Any], object]
    variants: tuple[str, ...] = STANDARD


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


def _blas_setup(n_tasks: int, per_task: int) -> Callable[[float], dict]:
    def setup(scale: float) -> dict:
        return {"tasks": [(_matmul_size(scale), per_task)] * n_tasks}

    return setup


def _blas_setup_large_small(scale: float) -> dict:
    n = _matmul_size(scale)
    return {"tasks": [(n, 8)] + [(n * 2 // 3, 1)] * 20}


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


def _hgb_setup(scale: float) -> dict:
    X, y = _classification(_sized(20_000, scale, lowest=300), 30)
    return {"X": X, "y": y}


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


def _forest_setup(scale: float) -> dict:
    X, y = _classification(_sized(8_000, scale, lowest=200), 20)
    return {"X": X, "y": y, "n_estimators": _sized(40, scale**0.5, lowest=4)}


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


def _tiny_setup(scale: float) -> dict:
    return {"n_tasks": _sized(10_000, scale, lowest=50)}


def _tiny_run(state: dict, variant) -> int:
    calls = (delayed(tiny)(i) for i in range(state["n_tasks"]))
    return sum(Parallel(n_jobs=2)(calls))


# -- nested ------------------------------------------------------------------------
def inner_blas(seed: int, n: int, n_tasks: int) -> float:
    """An inner ``Parallel(n_jobs=-1)`` of BLAS tasks, run inside a task."""
    calls = (delayed(matmuls)(seed * 100 + j, n, 2) for j in range(n_tasks))
    return sum(Parallel(n_jobs=-1)(calls))


def _nested_setup(scale: float) -> dict:
    return {"n": _sized(1000, scale**0.5, lowest=48), "outer": 4, "inner": 4}


def _nested_run(state: dict, variant) -> float:
    calls = (
        delayed(inner_blas)(seed, state["n"], state["inner"])
        for seed in range(state["outer"])
    )
    return sum(Parallel(n_jobs=2)(calls))


# -- a workload that never ends (checks the time limit; not in the default set) --
def _stall_setup(scale: float) -> dict:
    import numpy as np

    return {"array": np.zeros(_sized(1_000_000, 1.0))}  # 8 MB: memory-mapped


def _stall_run(state: dict, variant) -> None:
    Parallel(n_jobs=2)(delayed(_sleep_on)(state["array"]) for _ in range(2))


def _sleep_on(array) -> None:
    time.sleep(3600)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "blas_uniform",
            "8 uniform BLAS tasks (2 matmuls 1500x1500 each), n_jobs=2",
            _blas_setup(8, 2),
            _blas_run,
        ),
        Workload(
            "blas_tail3",
            "3 BLAS tasks (4 matmuls 1500x1500 each) on n_jobs=2",
            _blas_setup(3, 4),
            _blas_run,
        ),
        Workload(
            "blas_large_small",
            "1 large BLAS task (8 matmuls 1500) + 20 small (1 matmul 1000), n_jobs=2",
            _blas_setup_large_small,
            _blas_run,
        ),
        Workload(
            "hgb_grid",
            "GridSearchCV(HistGradientBoostingClassifier(max_iter=50)), "
            "4 candidates, cv=3, n_jobs=2, 20k x 30 (OpenMP)",
            _hgb_setup,
            _hgb_run,
            STANDARD + ("threading-omp1",),
        ),
        Workload(
            "random_forest",
            "RandomForestClassifier(n_estimators=40, n_jobs=2).fit, 8k x 20",
            _forest_setup,
            _forest_run,
        ),
        Workload(
            "tiny_tasks",
            "10^4 tiny tasks (~0.2 ms of pure Python each), n_jobs=2",
            _tiny_setup,
            _tiny_run,
        ),
        Workload(
            "nested_blas",
            "outer Parallel(n_jobs=2) of 4 tasks, each an inner "
            "Parallel(n_jobs=-1) of 4 BLAS tasks (2 matmuls 1000x1000)",
            _nested_setup,
            _nested_run,
        ),
        Workload(
            "stall",
            "2 tasks that sleep for an hour (checks the time limit)",
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
    try:
        return WORKLOADS[name]
    except KeyError:
        known = ", ".join(WORKLOADS)
        raise ValueError(f"unknown workload {name!r}; known: {known}") from None
