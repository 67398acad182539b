"""Thread mode, work-conserving budgets and nested calls (issue: beat joblib)."""

import os
import threading
import time
from collections import Counter
from pathlib import Path

import joblib
import pytest
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_info

import budgeted
from budgeted import BudgetedBackend, split_budget
from conftest import probe_task

MODES = ["processes", "threads"]


@pytest.mark.parametrize("n_cpus, n_jobs", [(16, 6), (2, 2)])
def test_thread_mode_each_task_observes_its_budget(n_cpus, n_jobs, barrier_factory):
    barrier = barrier_factory(n_jobs)
    with parallel_config("budgeted", n_jobs=n_jobs, n_cpus=n_cpus, prefer="threads"):
        probes = Parallel()(delayed(probe_task)(barrier) for _ in range(n_jobs))
    plan = split_budget(n_cpus, n_jobs)
    assert {p.pid for p in probes} == {os.getpid()}
    assert len({p.thread for p in probes}) == n_jobs
    assert Counter(p.budget for p in probes) == Counter(plan)
    for p in probes:
        assert p.pools["openmp"] == p.budget  # OpenMP limits are per thread
        # BLAS pools are process-wide: the smallest running budget, never more
        assert p.pools["openblas"] == min(plan)


@pytest.mark.parametrize(
    "call",
    [
        lambda: Parallel(backend="budgeted", n_jobs=2, prefer="threads"),
        lambda: Parallel(backend="budgeted", n_jobs=2, require="sharedmem"),
    ],
    ids=["prefer", "require"],
)
def test_thread_hints_run_on_budgeted_threads(call, barrier_factory):
    barrier = barrier_factory(2)
    probes = call()(delayed(probe_task)(barrier) for _ in range(2))
    assert {p.pid for p in probes} == {os.getpid()}
    assert len({p.thread for p in probes}) == 2


def test_run_on_threads_gives_each_call_its_share_and_keeps_order(barrier_factory):
    from budgeted.threads import run_on_threads

    barrier = barrier_factory(3)
    before = threadpool_info()
    probes = run_on_threads([lambda: probe_task(barrier)] * 3, n_cpus=8)
    assert Counter(p.budget for p in probes) == Counter(split_budget(8, 3))
    assert len({p.thread for p in probes} - {threading.get_native_id()}) == 3
    for p in probes:
        assert p.pools["openmp"] == p.budget
        assert p.pools["openblas"] == min(split_budget(8, 3))
    assert threadpool_info() == before
    assert run_on_threads([lambda i=i: i for i in range(5)], n_cpus=2) == list(range(5))


def test_run_on_threads_runs_a_lone_call_here_with_every_cpu():
    from budgeted.threads import run_on_threads

    (p,) = run_on_threads([probe_task], n_cpus=5)
    assert p.thread == threading.get_native_id()
    assert p.budget == p.pools["openmp"] == p.pools["openblas"] == 5
    assert run_on_threads([]) == []


def test_run_on_threads_raises_once_every_call_is_done():
    from budgeted.threads import run_on_threads

    finished = []

    def slow():
        time.sleep(0.2)
        finished.append("slow")

    def fail():
        raise KeyError("block 1")

    with pytest.raises(KeyError, match="block 1"):
        run_on_threads([fail, slow], n_cpus=2)
    assert finished == ["slow"]  # no thread left running behind the error


def test_thread_mode_restores_the_callers_pools(barrier_factory):
    before = threadpool_info()
    barrier = barrier_factory(3)
    with parallel_config("budgeted", n_jobs=3, n_cpus=9, prefer="threads"):
        Parallel()(delayed(probe_task)(barrier) for _ in range(3))
    assert threadpool_info() == before


def test_sklearn_sharedmem_calls_use_several_budgeted_threads(monkeypatch):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    X, y = make_classification(300, 8, random_state=0)
    forest = RandomForestClassifier(n_estimators=8, random_state=0).fit(X, y)
    seen = []
    original = DecisionTreeClassifier.predict_proba

    def recording_predict_proba(self, X, check_input=True):
        seen.append(
            (threading.get_native_id(), type(joblib.parallel.get_active_backend()[0]))
        )
        time.sleep(0.05)
        return original(self, X, check_input=check_input)

    monkeypatch.setattr(
        DecisionTreeClassifier, "predict_proba", recording_predict_proba
    )
    with parallel_config("budgeted", n_jobs=2):
        forest.set_params(n_jobs=2).predict_proba(X)  # require="sharedmem" inside
    threads = {t for t, _ in seen}
    assert len(threads) > 1 and threading.get_native_id() not in threads
    assert {backend for _, backend in seen} == {BudgetedBackend}


def lone_or_together(barrier):
    return probe_task(barrier).budget


@pytest.mark.parametrize("mode", MODES)
def test_lone_task_gets_every_cpu_and_four_share(mode, barrier_factory):
    with parallel_config("budgeted", n_jobs=4, n_cpus=8, prefer=mode):
        alone = Parallel()(delayed(lone_or_together)(None) for _ in range(1))
        barrier = barrier_factory(4)
        together = Parallel()(delayed(lone_or_together)(barrier) for _ in range(4))
    assert alone == [8]
    assert together == [2, 2, 2, 2]


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_false_restores_static_budgets(mode):
    with parallel_config("budgeted", n_jobs=4, n_cpus=8, prefer=mode, dynamic=False):
        alone = Parallel()(delayed(lone_or_together)(None) for _ in range(1))
    assert alone == [2]


def tail_task(index, folder):
    """Tasks 0 and 1 finish at once; task 2 watches its BLAS pool grow."""
    folder = Path(folder)
    if index < 2:
        (folder / f"done{index}").touch()
        return None
    while len(list(folder.glob("done*"))) < 2:
        time.sleep(0.01)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        blas = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        if blas == {4}:
            return blas
        time.sleep(0.01)
    return blas


@pytest.mark.parametrize("mode", MODES)
def test_budget_follows_the_work_at_the_tail_of_a_job(mode, tmp_path):
    """When the other batches finish, a running BLAS batch gets their CPUs."""
    with parallel_config("budgeted", n_jobs=2, n_cpus=4, batch_size=1, prefer=mode):
        results = Parallel()(delayed(tail_task)(i, tmp_path) for i in range(3))
    assert results[2] == {4}


def inner_probe(barrier):
    return probe_task(barrier)


def outer_task(folder):
    inner_barrier = budgeted.diagnostics.FileBarrier(folder, 4)
    inner = Parallel(n_jobs=-1)(delayed(inner_probe)(inner_barrier) for _ in range(4))
    return budgeted.current_budget(), inner


@pytest.mark.parametrize("mode", MODES)
def test_nested_call_splits_the_task_budget(mode, tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    with parallel_config("budgeted", n_jobs=2, n_cpus=8, prefer=mode):
        results = Parallel()(delayed(outer_task)(f) for f in folders)
    for outer_budget, inner in results:
        assert outer_budget == 4
        assert len({(p.pid, p.thread) for p in inner}) == 4
        assert [p.budget for p in inner] == [1, 1, 1, 1]
        assert all(set(p.pools.values()) == {1} for p in inner)


def tiny(i):
    time.sleep(0.001)
    return i


@pytest.mark.parametrize("mode", MODES)
def test_many_short_tasks_neither_deadlock_nor_fail(mode):
    with parallel_config("budgeted", n_jobs=2, prefer=mode):
        out = Parallel()(delayed(tiny)(i) for i in range(10_000))
    assert out == list(range(10_000))


def test_thread_mode_exception_keeps_type_and_backend_stays_usable():
    with parallel_config("budgeted", n_jobs=2, prefer="threads"):
        with pytest.raises(KeyError):
            Parallel()(delayed(lambda d: d["missing"])({}) for _ in range(4))
        assert Parallel()(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
