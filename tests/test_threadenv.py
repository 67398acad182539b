"""The thread-library registry and applying budgets in this process."""

import os
import subprocess
import sys
import threading

import pytest
from threadpoolctl import threadpool_info

from budgeted.threadenv import (
    INJECTED_VARS_MARKER,
    THREAD_LIBRARIES,
    budget_env,
    budget_scope,
    current_budget,
    limit_pools,
    pinned_libraries,
    restore_pools,
)


def pools():
    return {
        (i["internal_api"], i["filepath"]): i["num_threads"] for i in threadpool_info()
    }


@pytest.mark.parametrize("lib", THREAD_LIBRARIES, ids=lambda lib: lib.name)
def test_every_library_variable_is_in_the_budget_env(lib):
    env = budget_env(3)
    assert all(env[var] == "3" for var in lib.env_vars)
    assert all(var not in budget_env(3, frozenset({lib.name})) for var in lib.env_vars)


def test_issue_variables_are_all_covered():
    wanted = {
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
        "NUMBA_NUM_THREADS", "POLARS_MAX_THREADS",
    }  # fmt: skip
    assert wanted <= set(budget_env(2))
    assert budget_env(2)["LOKY_MAX_CPU_COUNT"] == "2"


def test_pinned_are_user_set_positive_ints():
    env = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "2"}
    assert pinned_libraries(env) == {"openmp", "mkl", "torch"}
    assert pinned_libraries({"OPENBLAS_NUM_THREADS": "2"}) == {"openblas"}


def test_torch_follows_a_user_set_omp_num_threads():
    """torch's intra-op pool obeys OMP_NUM_THREADS: pinning OpenMP pins it too."""
    import torch

    before = torch.get_num_threads()
    with budget_scope(before + 3, pinned_libraries({"OMP_NUM_THREADS": "1"})):
        assert torch.get_num_threads() == before
    with budget_scope(before + 3):
        assert torch.get_num_threads() == before + 3
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", ["0", "-1", "four", ""])
def test_bad_user_values_warn_and_are_budgeted(bad):
    with pytest.warns(RuntimeWarning, match="OMP_NUM_THREADS"):
        assert pinned_libraries({"OMP_NUM_THREADS": bad}) == frozenset()


def test_our_own_injected_variables_are_not_pinned():
    env = budget_env(4)
    assert pinned_libraries(env) == frozenset()
    env["OMP_NUM_THREADS"] = "3"
    env[INJECTED_VARS_MARKER] = env[INJECTED_VARS_MARKER].replace("OMP_NUM_THREADS", "")
    assert pinned_libraries(env) == {"openmp", "torch"}


def test_budget_scope_limits_and_restores():
    before = pools()
    environ = {"OMP_NUM_THREADS": "9"}
    with budget_scope(5, environ=environ):
        inside = threadpool_info()
        assert current_budget() == 5
        assert environ["OMP_NUM_THREADS"] == "5"
        assert environ["OPENBLAS_NUM_THREADS"] == "5"
    assert {i["num_threads"] for i in inside} == {5}
    assert pools() == before
    assert environ == {"OMP_NUM_THREADS": "9"}
    assert current_budget() == __import__("budgeted").usable_cpus()


def test_pinned_library_is_left_alone():
    openmp_before = {
        i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"
    }
    with budget_scope(5, pinned_libraries({"OMP_NUM_THREADS": "2"})):
        info = threadpool_info()
    assert {
        i["num_threads"] for i in info if i["user_api"] == "openmp"
    } == openmp_before
    assert {i["num_threads"] for i in info if i["user_api"] == "blas"} == {5}


def test_process_wide_limits_work_from_any_thread():
    """threadpoolctl 3.8 ignores OpenBLAS limits from a non-controlling thread."""
    previous = limit_pools(3, per_thread=False)  # the main thread sets first
    seen = []

    def other():
        prev = limit_pools(6, per_thread=False)
        seen.append(
            {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        )
        restore_pools(prev)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    restore_pools(previous)
    assert seen == [{6}]


def test_openmp_limit_is_per_thread():
    results = {}

    def in_thread(n):
        with budget_scope(n, shared_pools=False):
            results[n] = [
                i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"
            ]

    threads = [threading.Thread(target=in_thread, args=(n,)) for n in (3, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every OpenMP runtime loaded (scikit-learn's, torch's...) for that thread
    assert {n: set(counts) for n, counts in results.items()} == {3: {3}, 7: {7}}
    assert os.environ.get(INJECTED_VARS_MARKER) is None


# -- what Dask wrote into os.environ is not the user's --------------------------
@pytest.fixture
def dask_defaults(monkeypatch):
    """Dask's nanny defaults configured; no thread variable set at import."""
    import dask

    from budgeted import threadlibs

    for var in threadlibs._ENV_AT_IMPORT:
        monkeypatch.setitem(threadlibs._ENV_AT_IMPORT, var, None)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(INJECTED_VARS_MARKER, raising=False)
    defaults = {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "MALLOC_TRIM_THRESHOLD_": 65536,
    }
    with dask.config.set({"distributed.nanny.pre-spawn-environ": defaults}):
        yield threadlibs._ENV_AT_IMPORT


def test_values_dask_wrote_after_import_are_not_pins(dask_defaults, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as a LocalCluster's nanny does
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert pinned_libraries() == frozenset()


def test_pins_set_before_import_are_kept_even_at_dasks_value(
    dask_defaults, monkeypatch
):
    dask_defaults["OMP_NUM_THREADS"] = "1"  # the user's, before import
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")  # Dask's
    assert pinned_libraries() == {"openmp", "torch"}


def test_pins_set_after_import_to_other_values_are_kept(dask_defaults, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # not in Dask's config here
    assert pinned_libraries() == {"openmp", "openblas", "torch"}


def test_the_dask_rule_needs_dask_imported_and_os_environ(dask_defaults, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert pinned_libraries({"OMP_NUM_THREADS": "1"}) == {"openmp", "torch"}
    monkeypatch.setitem(sys.modules, "dask", None)  # Dask not imported
    assert pinned_libraries() == {"openmp", "torch"}


def test_snapshot_is_taken_at_import_and_never_imports_dask():
    code = (
        "import os, sys, joblib, threadpoolctl\n"
        "env = dict(os.environ)\n"
        "from budgeted import threadlibs\n"
        "threadlibs.pinned_libraries()\n"
        "print(threadlibs._ENV_AT_IMPORT['OMP_NUM_THREADS'], 'dask' in sys.modules,"
        " dict(os.environ) == env)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert run.stdout.split() == ["2", "False", "True"], run.stderr
