"""Bad input: a clear error naming the value, and a backend that still works."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config

from conftest import probe_task


def square(x, y=0):
    return x * x + y


def works_after(**config) -> None:
    """The backend runs a real call after the error."""
    with parallel_config("budgeted", n_jobs=2, n_cpus=2, **config):
        assert Parallel()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize(
    "config, error, match",
    [
        ({"n_jobs": 0}, ValueError, "n_jobs == 0"),
        # joblib's Parallel converts n_jobs before any backend code runs
        ({"n_jobs": "four"}, ValueError, "n_jobs could not be converted"),
        ({"n_cpus": 0}, ValueError, "n_cpus must be a positive integer, got 0"),
        ({"n_cpus": -2}, ValueError, "n_cpus must be a positive integer, got -2"),
        ({"max_nbytes": [1]}, TypeError, r"max_nbytes must be .*got \[1\]"),
        # joblib's Parallel parses size strings itself; its message names it
        ({"max_nbytes": "lots"}, ValueError, "Invalid literal for size give: lots"),
        ({"mmap_mode": "x"}, ValueError, "mmap_mode must be one of .*got 'x'"),
    ],
)
def test_bad_setting_is_named_and_backend_stays_usable(config, error, match):
    config = {"n_jobs": 2, **config}
    with pytest.raises(error, match=match), parallel_config("budgeted", **config):
        Parallel()(delayed(square)(i) for i in range(4))
    works_after()


class _HoldsALock:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, x):
        return x


@pytest.mark.parametrize(
    "task, named",
    [
        (delayed(square)(threading.Lock()), "argument 0 of square"),
        (delayed(square)(1, y=threading.Lock()), "argument 'y' of square"),
        (delayed(_HoldsALock())(1), "the function _HoldsALock"),
    ],
)
def test_unpicklable_task_names_the_argument(task, named):
    with (
        pytest.raises(pickle.PicklingError) as info,
        parallel_config("budgeted", n_jobs=2, n_cpus=2),
    ):
        Parallel()([delayed(square)(1), task])
    assert named in str(info.value)
    assert "cannot be pickled" in str(info.value)
    works_after()


@pytest.mark.parametrize(
    "value, prefer", [("0", "processes"), ("lots", "processes"), ("-2", "threads")]
)
def test_bad_user_thread_variable_is_ignored_in_real_workers(
    value, prefer, monkeypatch, barrier_factory
):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    barrier = barrier_factory(2)
    # a distinct idle timeout: a fresh pool, spawned with the bad variable
    timeout = 200 + len(value)
    with (
        pytest.warns(RuntimeWarning, match=f"OMP_NUM_THREADS={value!r}"),
        parallel_config(
            "budgeted", n_jobs=2, n_cpus=6, prefer=prefer, idle_worker_timeout=timeout
        ),
    ):
        probes = Parallel()(delayed(probe_task)(barrier) for _ in range(2))
    for p in probes:  # budgeted, not crashed: each worker ran under its share
        assert p.budget == 3
        assert p.pools["openmp"] == 3
        if prefer == "processes":
            assert p.env["OMP_NUM_THREADS"] == "3"


def test_memmapped_call_after_errors_still_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path))
    with (
        pytest.raises(ValueError, match="mmap_mode"),
        parallel_config("budgeted", n_jobs=2, mmap_mode="rw"),
    ):
        Parallel()(delayed(square)(1) for _ in range(2))
    a = np.ones(1000)
    with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K"):
        assert Parallel()(delayed(np.sum)(a) for _ in range(2)) == [1000.0, 1000.0]
    assert list(tmp_path.iterdir()) == []
