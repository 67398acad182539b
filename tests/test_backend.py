"""The 'budgeted' backend in process mode, observed inside real workers."""

from collections import Counter

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_backend, parallel_config

import budgeted
from budgeted import BudgetedBackend, split_budget
from conftest import probe_task


def run_probes(n_jobs, barrier, **config):
    with parallel_config("budgeted", n_jobs=n_jobs, **config):
        return Parallel()(delayed(probe_task)(barrier) for _ in range(n_jobs))


def test_import_registers_and_register_is_idempotent():
    assert joblib.parallel.BACKENDS["budgeted"] is BudgetedBackend
    budgeted.register()
    budgeted.register()
    assert joblib.parallel.BACKENDS["budgeted"] is BudgetedBackend


@pytest.mark.parametrize("n_cpus, n_jobs", [(16, 6), (2, 2), (2, 8), (7, 3)])
def test_budgets_observed_in_workers_form_the_split(n_cpus, n_jobs, barrier_factory):
    probes = run_probes(n_jobs, barrier_factory(n_jobs), n_cpus=n_cpus)
    assert len({p.pid for p in probes}) == n_jobs
    assert Counter(p.budget for p in probes) == Counter(split_budget(n_cpus, n_jobs))
    for p in probes:
        # what the libraries themselves report, and what the task's env holds
        assert set(p.pools) >= {"openblas", "openmp"}
        assert set(p.pools.values()) == {p.budget}
        assert (
            p.env["OMP_NUM_THREADS"] == p.env["OPENBLAS_NUM_THREADS"] == str(p.budget)
        )
        assert p.env["LOKY_MAX_CPU_COUNT"] == str(p.budget)


@pytest.mark.parametrize("context", [parallel_config, parallel_backend])
def test_both_context_managers_reach_the_backend(context, barrier_factory):
    barrier = barrier_factory(2)
    with context("budgeted", n_jobs=2, n_cpus=6):
        probes = Parallel()(delayed(probe_task)(barrier) for _ in range(2))
    assert sorted(p.budget for p in probes) == [3, 3]


def test_user_set_variable_is_passed_through(monkeypatch, barrier_factory):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    probes = run_probes(2, barrier_factory(2), n_cpus=8)
    for p in probes:
        assert p.env["OMP_NUM_THREADS"] == "3"
        assert p.pools["openmp"] == 3
        assert p.pools["openblas"] == p.budget == 4


def test_inner_max_num_threads_sets_every_worker(barrier_factory):
    probes = run_probes(3, barrier_factory(3), n_cpus=16, inner_max_num_threads=2)
    assert [p.budget for p in probes] == [2, 2, 2]
    assert all(set(p.pools.values()) == {2} for p in probes)


def test_current_budget_outside_tasks_is_usable_cpus():
    assert budgeted.current_budget() == budgeted.usable_cpus()


@pytest.mark.parametrize(
    "n_jobs, expected", [(-1, 8), (-2, 7), (3, 3), (None, 1), (20, 20)]
)
def test_effective_n_jobs_under_the_backend(n_jobs, expected):
    with parallel_config("budgeted", n_cpus=8):
        assert joblib.effective_n_jobs(n_jobs) == expected


@pytest.mark.parametrize("bad", [0, "four", "2.3"])
def test_bad_n_jobs_errors_name_the_value_and_lose_nothing(bad):
    with (
        parallel_config("budgeted", n_cpus=4),
        pytest.raises(ValueError, match="n_jobs"),
    ):
        joblib.effective_n_jobs(bad)
    with (
        pytest.raises(ValueError, match="n_jobs"),
        parallel_config("budgeted", n_jobs=bad),
    ):
        Parallel()(delayed(abs)(-i) for i in range(3))
    with parallel_config("budgeted", n_jobs=2):  # still usable afterwards
        assert Parallel()(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_float_n_jobs_is_truncated_as_joblib_does():
    """joblib's ``Parallel`` applies ``int()``: 1.5 means 1, 2.7 means 2."""
    with parallel_config("budgeted", n_jobs=2.7, n_cpus=4):
        assert Parallel()(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
        assert joblib.effective_n_jobs(None) == 2


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="n_cpus"):
        BudgetedBackend(n_cpus=0)
    with pytest.raises(ValueError, match="prefer"):
        BudgetedBackend(prefer="gpu")


def nested_call(backend):
    import os

    inner = Parallel(backend=backend, n_jobs=2)(
        delayed(budgeted.current_budget)() for _ in range(4)
    )
    return os.getpid(), budgeted.current_budget(), inner


def test_nested_budgeted_call_inside_a_task_subdivides_the_budget():
    with parallel_config("budgeted", n_jobs=2, n_cpus=8, dynamic=False):
        static = Parallel()(
            delayed(nested_call)(BudgetedBackend(dynamic=False)) for _ in range(2)
        )
        dynamic = Parallel()(delayed(nested_call)("budgeted") for _ in range(2))
    for _pid, outer_budget, inner in static:
        assert outer_budget == 4
        assert inner == [2, 2, 2, 2]
    for _pid, outer_budget, inner in dynamic:
        # By name too. A dynamic inner task that starts when the others are
        # done (its thread was descheduled) takes the idle share: 2 or 4 of
        # the outer task's 4, never the machine's 8.
        assert outer_budget == 4 and set(inner) <= {2, 4}


def memmap_task(a):
    return type(a).__name__, a.flags.writeable, getattr(a, "filename", None), a.sum()


def test_large_arrays_arrive_as_read_only_memmaps(tmp_path):
    a = np.arange(100_000, dtype=np.float64)
    with parallel_config("budgeted", n_jobs=2, max_nbytes="1K", temp_folder=tmp_path):
        results = Parallel()(delayed(memmap_task)(a) for _ in range(2))
    for kind, writeable, filename, total in results:
        assert kind == "memmap" and not writeable
        assert str(filename).startswith(str(tmp_path))
        assert total == a.sum()


def test_mmap_mode_is_honoured(tmp_path):
    a = np.ones(50_000)
    with parallel_config(
        "budgeted", n_jobs=2, max_nbytes="1K", mmap_mode="r+", temp_folder=tmp_path
    ):
        results = Parallel()(delayed(memmap_task)(a) for _ in range(2))
    assert all(kind == "memmap" and writeable for kind, writeable, *_ in results)


def test_executor_is_reused_between_calls():
    def pids():
        with parallel_config("budgeted", n_jobs=2, n_cpus=4):
            return set(Parallel()(delayed(__import__("os").getpid)() for _ in range(8)))

    first, second = pids(), pids()
    assert first & second


def test_exceptions_keep_their_type():
    with pytest.raises(ZeroDivisionError), parallel_config("budgeted", n_jobs=2):
        Parallel()(delayed(lambda x: 1 / x)(i) for i in range(3))


def _tbb_ipc_switches(_):
    import os

    return os.environ.get("ENABLE_IPC"), os.environ.get("IPC_ENABLE")


@pytest.mark.parametrize(
    "user, expected",
    [
        ({}, ("1", None)),  # joblib's switch; oneTBB's is left off (test_tbb.py)
        ({"IPC_ENABLE": "1"}, ("1", "1")),  # the user's values are kept
        ({"ENABLE_IPC": "0"}, ("0", None)),
    ],
)
def test_workers_get_joblibs_tbb_switch_and_the_users(monkeypatch, user, expected):
    for name in ("ENABLE_IPC", "IPC_ENABLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    with parallel_config("budgeted", n_jobs=2, n_cpus=2):
        seen = set(Parallel()(delayed(_tbb_ipc_switches)(i) for i in range(4)))
    assert seen == {expected}
