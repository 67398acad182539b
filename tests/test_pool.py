"""The budgeted process pool: each worker's budget, observed in the worker."""

import os
import subprocess
import sys
from collections import Counter

# Workers import this module (to unpickle the initializer) before the pool
# applies their budget, so numpy's OpenBLAS is loaded then and gets limited.
import numpy  # noqa: F401
import psutil
import pytest
from threadpoolctl import threadpool_info

import budgeted
from budgeted import split_budget
from budgeted.pool import BudgetedExecutor, budgeted_executor
from conftest import probe_task

_AT_START: dict = {}


def record_start_state(tag):
    """Initializer: what the worker's libraries said before any task ran.

    Only libraries already loaded are read: one loaded now reads the budget
    from the environment, and OpenBLAS caps that at the machine's cores.
    """
    _AT_START.update(
        tag=tag,
        omp_env=os.environ.get("OMP_NUM_THREADS"),
        pools=[(i["internal_api"], i["num_threads"]) for i in threadpool_info()],
    )


def start_state():
    return os.getpid(), budgeted.current_budget(), dict(_AT_START)


def probes_of(pool, barrier, n):
    return [f.result() for f in [pool.submit(probe_task, barrier) for _ in range(n)]]


@pytest.mark.parametrize("n_cpus, n_workers", [(16, 6), (2, 2), (7, 3)])
def test_worker_budgets_form_the_split(n_cpus, n_workers, barrier_factory):
    with budgeted_executor(n_workers, n_cpus=n_cpus) as pool:
        probes = probes_of(pool, barrier_factory(n_workers), n_workers)
    assert len({p.pid for p in probes}) == n_workers
    assert Counter(p.budget for p in probes) == Counter(split_budget(n_cpus, n_workers))
    for p in probes:
        assert set(p.pools.values()) == {p.budget}
        assert p.env["OMP_NUM_THREADS"] == p.env["OPENBLAS_NUM_THREADS"]
        assert p.env["OMP_NUM_THREADS"] == str(p.budget)


def test_budget_is_applied_before_the_initializer(barrier_factory):
    with budgeted_executor(
        2, n_cpus=6, initializer=record_start_state, initargs=("x",)
    ) as pool:
        states = [pool.submit(start_state) for _ in range(4)]
        states = [s.result() for s in states]
    for _pid, budget, at_start in states:
        assert budget == 3 and at_start["tag"] == "x"
        assert at_start["omp_env"] == "3"
        assert ("openblas", 3) in at_start["pools"]
        assert {n for _, n in at_start["pools"]} == {3}


def test_threads_per_worker_sets_every_worker(barrier_factory):
    with budgeted_executor(3, n_cpus=16, threads_per_worker=2) as pool:
        assert pool.budgets == (2, 2, 2)
        probes = probes_of(pool, barrier_factory(3), 3)
    assert [p.budget for p in probes] == [2, 2, 2]
    assert all(set(p.pools.values()) == {2} for p in probes)


def test_user_set_variable_is_passed_through(monkeypatch, barrier_factory):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with budgeted_executor(2, n_cpus=8) as pool:
        probes = probes_of(pool, barrier_factory(2), 2)
    for p in probes:
        assert p.env["OMP_NUM_THREADS"] == "3" and p.pools["openmp"] == 3
        assert p.pools["openblas"] == p.budget == 4


@pytest.mark.filterwarnings("ignore:A worker stopped:UserWarning")  # loky, expected
def test_respawned_workers_get_their_shares_back(barrier_factory):
    with budgeted_executor(2, n_cpus=5, idle_timeout=0.5) as pool:
        first = probes_of(pool, barrier_factory(2), 2)
        old = {p.pid for p in first}
        psutil.wait_procs([psutil.Process(pid) for pid in old], timeout=30)
        second = probes_of(pool, barrier_factory(2), 2)
    assert not old & {p.pid for p in second}
    assert sorted(p.budget for p in second) == [2, 3]


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_other_start_methods(context, barrier_factory):
    with budgeted_executor(2, n_cpus=4, context=context) as pool:
        probes = probes_of(pool, barrier_factory(2), 2)
    assert [p.budget for p in probes] == [2, 2]


def test_shutdown_leaves_no_worker_and_no_board(barrier_factory):
    pool = budgeted_executor(2, n_cpus=4)
    board = pool._board.path
    workers = [psutil.Process(p.pid) for p in probes_of(pool, barrier_factory(2), 2)]
    assert board.exists() and len(workers) == 2
    pool.shutdown()
    assert not board.exists()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []


def test_a_pool_starts_beside_an_unusable_temp_folder(monkeypatch, tmp_path):
    # The pool memory-maps nothing itself; its search for leftovers skips
    # the folder, and whatever writes there reports it.
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path / "missing"))
    with budgeted_executor(1, n_cpus=1) as pool:
        assert pool.submit(os.getpid).result() != os.getpid()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_workers": 0}, "n_jobs"),
        ({"n_workers": 2, "n_cpus": 0}, "n_cpus"),
        ({"n_workers": 2, "threads_per_worker": "two"}, "n_cpus|threads"),
        ({"n_workers": 2, "context": "fork"}, "fork"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetedExecutor(**kwargs)


def test_importing_budgeted_keeps_joblibs_own_loky():
    """The standalone loky package would replace joblib's "loky" start method."""
    code = "import joblib, budgeted, budgeted.pool, sys; print('loky' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
