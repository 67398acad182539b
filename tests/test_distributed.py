"""The 'budgeted-dask' backend on real LocalClusters, observed inside the tasks.

Two clusters are started once for the module (2 workers x 1 thread and
2 workers x 2 threads, nanny-started processes); the example script starts a
third in a subprocess. The last test closes them and checks no process is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import psutil
import pytest
from dask.distributed import Client, LocalCluster
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_info

import budgeted
from _hostwide import Holder
from budgeted import split_budget, usable_cpus
from budgeted.diagnostics import probe
from budgeted.distributed import BudgetedDaskBackend, Seat, budget_workers, plan_seats
from conftest import probe_task

ROOT = Path(__file__).resolve().parents[1]
_CLUSTERS: dict[str, tuple[LocalCluster, Client]] = {}
_CHILDREN_BEFORE: set[int] = set()  # child processes before our first cluster


_PLUGIN: dict = {}  # what the 2x1 fixture saw around budget_workers()


def _start(threads_per_worker: int):
    if not _CLUSTERS:
        _CHILDREN_BEFORE.update(_children())
    with warnings.catch_warnings():
        # dashboard_address=None still serves /health etc. on port 8787 if free
        warnings.filterwarnings("ignore", "Port 8787 is already in use")
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
        )
    client = Client(cluster)
    _CLUSTERS[f"2x{threads_per_worker}"] = (cluster, client)
    return client


def _environ() -> dict[str, str]:
    """The client's environment (without pytest's own bookkeeping variable)."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _close_all() -> list[int]:
    """Close every cluster of this module; return the worker PIDs they had."""
    pids = []
    for cluster, client in _CLUSTERS.values():
        pids += worker_pids(client).values()
        client.close()
        cluster.close()
    _CLUSTERS.clear()
    return pids


@pytest.fixture(scope="module", autouse=True)
def _restore_environ():
    """Dask's nannies write OMP_NUM_THREADS=1 and the like into the environment
    of the process that starts them; later test modules must not see them as
    the user's."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def client1():
    """2 workers x 1 thread; worker environments planned for 6 CPUs (plugin)."""
    client = _start(1)
    _PLUGIN.update(env=_environ(), pools=threadpool_info())
    _PLUGIN["result"] = budget_workers(client, n_cpus=6)
    _PLUGIN.update(env_after=_environ(), pools_after=threadpool_info())
    yield client
    _close_all()


@pytest.fixture(scope="module")
def client2():
    """2 workers x 2 threads, no plugin."""
    yield _start(2)
    _close_all()


def run_probes(client, n_tasks, barrier, **config):
    with parallel_config("budgeted-dask", client=client, **config):
        return Parallel()(delayed(probe_task)(barrier) for _ in range(n_tasks))


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


# -- pure planning --
def test_seats_split_each_host_over_all_its_worker_threads():
    workers = {
        "tcp://b:1": {"host": "b", "nthreads": 4},
        "tcp://a:2": {"host": "a", "nthreads": 1},
        "tcp://a:1": {"host": "a", "nthreads": 2},
    }
    seats = plan_seats(workers)
    assert seats == {
        "tcp://a:1": Seat(host_threads=3, first=0, nthreads=2),
        "tcp://a:2": Seat(host_threads=3, first=2, nthreads=1),
        "tcp://b:1": Seat(host_threads=4, first=0, nthreads=4),
    }
    shares_a = seats["tcp://a:1"].shares(7) + seats["tcp://a:2"].shares(7)
    assert shares_a == (3, 2, 2) and sum(shares_a) == 7
    assert seats["tcp://b:1"].shares(2) == (1, 1, 1, 1)  # never below 1
    # The smallest share (what a nanny writes, what holds any thread): the last.
    assert [seats[a].smallest_share(7) for a in sorted(seats)] == [2, 2, 1]


def test_seats_doctests():
    import doctest

    from budgeted.distributed import seats

    assert doctest.testmod(seats).failed == 0


# -- the environment path (nanny plugin) and the client's own environment --
def _openmp_loaded_here():
    import sklearn.utils._openmp_helpers  # noqa: F401

    info = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    return info.get("openmp"), os.environ.get("OMP_NUM_THREADS")


def test_plugin_sets_worker_env_and_client_env_is_untouched(client1, barrier_factory):
    # Runs first on client1: its workers are fresh from budget_workers().
    assert _PLUGIN["result"] == dict.fromkeys(worker_pids(client1), 3)
    # OpenMP first loaded in a fresh worker process reads its environment.
    assert set(client1.run(_openmp_loaded_here).values()) == {(3, "3")}
    probes = run_probes(client1, 2, barrier_factory(2), n_cpus=8)
    assert [p.pools["openmp"] for p in probes] == [4, 4]
    assert [p.env["OMP_NUM_THREADS"] for p in probes] == ["4", "4"]
    # After the call, a worker's environment is back to the plugin's value.
    assert set(client1.run(_omp_env).values()) == {"3"}
    # The client's environment and pools: untouched by the plugin and the call.
    assert _PLUGIN["env_after"] == _PLUGIN["env"] == _environ()
    assert _PLUGIN["pools_after"] == _PLUGIN["pools"] == threadpool_info()


def _omp_env() -> str | None:
    return os.environ.get("OMP_NUM_THREADS")


# -- budgets observed in the tasks --
@pytest.mark.parametrize("fixture, expected", [("client1", 4), ("client2", 2)])
def test_each_task_observes_its_host_budget(
    fixture, expected, request, barrier_factory
):
    client = request.getfixturevalue(fixture)
    n_threads = sum(client.ncores().values())
    probes = run_probes(client, n_threads, barrier_factory(n_threads), n_cpus=8)
    assert {p.pid for p in probes} == set(worker_pids(client).values())
    assert os.getpid() not in {p.pid for p in probes}
    for p in probes:
        assert p.budget == expected
        assert p.pools["openmp"] == p.pools["openblas"] == expected
        assert p.env["OMP_NUM_THREADS"] == p.env["OPENBLAS_NUM_THREADS"]
        assert p.env["OMP_NUM_THREADS"] == str(expected)


def test_unequal_shares_and_blas_gets_the_smallest_of_its_process(
    client2, barrier_factory
):
    # 7 CPUs over 4 threads on one host: (2, 2) for the first worker (by
    # address), (2, 1) for the second, whose process-wide BLAS pool must be 1.
    # OpenMP is loaded first: a library loaded *during* a batch reads the
    # environment, which holds the smallest budget running in the process.
    # All four batches run when observed (first barrier) and still run until
    # all have observed (second one): BLAS follows the batches running.
    client2.run(_openmp_loaded_here)
    started, observed = barrier_factory(4), barrier_factory(4)
    with parallel_config("budgeted-dask", client=client2, n_cpus=7):
        tasks = (delayed(probe)(observed, started.wait) for _ in range(4))
        probes = Parallel()(tasks)
    pids = worker_pids(client2)
    first, second = (pids[a] for a in sorted(pids))
    by_pid = {
        pid: sorted(p.pools["openmp"] for p in probes if p.pid == pid)
        for pid in (first, second)
    }
    assert by_pid == {first: [2, 2], second: [1, 2]}
    assert sum(p.pools["openmp"] for p in probes) == 7
    for p in probes:
        assert p.pools["openblas"] == (2 if p.pid == first else 1)
        assert p.budget == p.pools["openmp"]


def test_inner_max_num_threads_gives_every_task_that_budget(client1, barrier_factory):
    probes = run_probes(client1, 2, barrier_factory(2), inner_max_num_threads=3)
    assert [(p.pools["openmp"], p.pools["openblas"]) for p in probes] == [(3, 3)] * 2


def test_explicit_client_wins_over_the_default_one(client1, client2):
    other = client1 if Client.current() is client2 else client2
    probes = run_probes(other, 6, None, n_cpus=8)
    assert {p.pid for p in probes} <= set(worker_pids(other).values())


def _inner(j: int) -> tuple[int, int]:
    return os.getpid(), budgeted.current_budget()


def _outer(i: int) -> list[tuple[int, int]]:
    return Parallel()(delayed(_inner)(j) for j in range(3))


def test_nested_call_runs_on_the_cluster_with_the_same_plan(client1):
    with parallel_config("budgeted-dask", client=client1, n_cpus=8):
        out = Parallel()(delayed(_outer)(i) for i in range(2))
    inner = [item for items in out for item in items]
    assert {pid for pid, _ in inner} <= set(worker_pids(client1).values())
    assert {budget for _, budget in inner} == {4}


def _started(_):
    return os.getpid(), time.monotonic()


@pytest.mark.parametrize("ledger", [True, False])
def test_batches_wait_for_their_hosts_ledger(client1, ledger):
    with Holder(2, 2, 2.0) as holder:  # every token of a 2-CPU ledger
        with parallel_config("budgeted-dask", client=client1, n_cpus=2, ledger=ledger):
            seen = Parallel()(delayed(_started)(i) for i in range(2))
        end = holder.end()
    assert {pid for pid, _ in seen} <= set(worker_pids(client1).values())
    starts = [t for _, t in seen]
    if ledger:
        assert min(starts) >= end  # they waited for the other program
    else:
        assert max(starts) < end  # local budgets only: they did not


def test_a_batch_runs_on_the_tokens_it_holds(client1, barrier_factory):
    """Planned 2 + 2 of 4 CPUs, with 1 held elsewhere: 3 CPUs among them."""
    with Holder(1, 4, 30.0):
        probes = run_probes(client1, 2, barrier_factory(2), n_cpus=4)
    assert sorted(p.budget for p in probes) == [1, 2]
    for p in probes:
        assert p.pools["openmp"] == p.pools["openblas"] == p.budget


def test_worker_missing_from_the_plan_asks_the_scheduler(client1):
    from budgeted.distributed.worker import CallPlan, DaskBatch

    tasks = [(probe_task, (), {})]
    batch = DaskBatch(tasks, CallPlan(seats={}, n_cpus=8))  # planned before
    probes = client1.submit(batch, tasks=tasks, pure=False).result()
    assert probes[0].pools["openmp"] == probes[0].budget == 4


# -- joblib's Dask machinery, kept --
class Counted:
    """A large payload whose every pickling and unpickling is logged to a file."""

    def __init__(self, payload: np.ndarray, log: str) -> None:
        self.payload, self.log = payload, log

    def __reduce__(self):
        _log_event(self.log, "pickled")
        return _unpickle_counted, (self.payload, self.log)


def _unpickle_counted(payload, log):
    _log_event(log, "unpickled")
    return Counted(payload, log)


def _log_event(log: str, event: str) -> None:
    with open(log, "a") as f:
        f.write(f"{event} {os.getpid()}\n")


def _events(log: Path, event: str) -> list[int]:
    """PIDs of the processes that logged ``event``, one per time."""
    lines = (line.split() for line in log.read_text().splitlines())
    return [int(pid) for name, pid in lines if name == event]


def _total(counted: Counted, i: int) -> float:
    return float(counted.payload.sum()) + i


def test_large_argument_is_scattered_once(client1, tmp_path):
    """The argument leaves the client once and reaches each worker once.

    Not once per task. Dask's Active Memory Manager (ReduceReplicas, every
    2 s) may drop a worker's copy between two tasks, which then fetches it
    again from a peer: measured with joblib's own "dask" backend too (a
    worker's story shows "remove-replica" then "gather-dependencies"). That
    is Dask's choice, so it is paused here to count budgeted's transfers.
    """
    import dask.sizeof

    dask.sizeof.sizeof.register(Counted)(lambda c: c.payload.nbytes)
    log = tmp_path / "events.txt"
    big = Counted(np.ones(200_000), str(log))
    amm_was_running = client1.amm.running()
    client1.amm.stop()
    try:
        with parallel_config("budgeted-dask", client=client1, n_cpus=8):
            out = Parallel(batch_size=1)(delayed(_total)(big, i) for i in range(10))
    finally:
        if amm_was_running:
            client1.amm.start()
    assert out == [200_000.0 + i for i in range(10)]
    # Pickled in the client once (the scatter), not with each of the 10 tasks.
    assert _events(log, "pickled").count(os.getpid()) == 1
    unpickled_in = _events(log, "unpickled")
    assert unpickled_in and set(unpickled_in) <= set(worker_pids(client1).values())
    assert len(unpickled_in) == len(set(unpickled_in))  # once per worker


def _fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise LookupError(f"task {i} failed")
    return i


def test_exception_is_reraised_with_its_type_and_results_keep_order(client2):
    with parallel_config("budgeted-dask", client=client2, n_cpus=8):
        assert Parallel()(delayed(_fail_on)(i, -1) for i in range(20)) == list(
            range(20)
        )
        with pytest.raises(LookupError, match="task 3 failed"):
            Parallel()(delayed(_fail_on)(i, 3) for i in range(6))


def _fail_or_wait(i: int, stop: str) -> int:
    if i == 0:
        raise KeyError("first task fails")
    deadline = time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.02)
    return i


def _joblib_tasks(dask_scheduler) -> list[str]:
    """Batches of ``_fail_or_wait`` the scheduler still means to run."""
    return [
        str(key)
        for key, task in dask_scheduler.tasks.items()
        if "_fail_or_wait" in str(key) and task.state not in ("memory", "erred")
    ]


def test_abort_cancels_the_submitted_futures(client1, tmp_path):
    stop = str(tmp_path / "stop")
    try:
        with (
            parallel_config("budgeted-dask", client=client1, n_cpus=8),
            pytest.raises(KeyError, match="first task fails"),
        ):
            Parallel(batch_size=1)(delayed(_fail_or_wait)(i, stop) for i in range(8))
        # The other tasks wait for the stop file: only a cancel removes them
        # from the scheduler (the failed batch itself is done, "memory").
        deadline = time.monotonic() + 20
        while client1.run_on_scheduler(_joblib_tasks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client1.run_on_scheduler(_joblib_tasks) == []
    finally:
        Path(stop).touch()


# -- n_jobs and scikit-learn ----------------------------------------------------------
def test_n_jobs_means_all_threads_of_the_cluster(client2):
    with parallel_config("budgeted-dask", client=client2):
        assert joblib.effective_n_jobs(-1) == 4
        # n_jobs=1 is ignored as by joblib's dask backend: tasks go to the cluster
        probes = Parallel(n_jobs=1)(delayed(probe_task)() for _ in range(2))
    assert {p.pid for p in probes} <= set(worker_pids(client2).values())
    backend = BudgetedDaskBackend(client=client2)
    for bad in (0, 1.5, "four"):
        with pytest.raises(ValueError, match="n_jobs"):
            backend.effective_n_jobs(bad)
    with pytest.raises(ValueError, match="n_cpus"):
        BudgetedDaskBackend(client=client2, n_cpus=0)


def test_joblib_private_names_we_rely_on_still_exist(client2):
    # The subclass wraps joblib's batch in _to_func_args and cancels the
    # futures it keeps in _results/_callbacks: fail loudly if joblib moves them.
    import inspect

    backend = BudgetedDaskBackend(client=client2)
    assert inspect.iscoroutinefunction(type(backend).__mro__[1]._to_func_args)
    assert isinstance(backend._results, dict)
    assert isinstance(backend._callbacks, dict)


def test_grid_search_matches_loky(client2):
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV
    from sklearn.tree import DecisionTreeClassifier

    X, y = make_classification(n_samples=300, n_features=8, random_state=0)
    grid = {"max_depth": [2, 4, 8, None], "min_samples_leaf": [1, 5]}

    def search():
        est = DecisionTreeClassifier(random_state=0)
        return GridSearchCV(est, grid, cv=3, n_jobs=-1).fit(X, y)

    with parallel_config("loky"):
        ref = search()
    with parallel_config("budgeted-dask", client=client2, n_cpus=8):
        ours = search()
    assert ours.best_params_ == ref.best_params_
    for key in ("params", "mean_test_score", "rank_test_score", "split0_test_score"):
        assert list(ours.cv_results_[key]) == list(ref.cv_results_[key])


# -- errors without dask or without a client --
_NO_DASK = """
import sys
sys.modules["distributed"] = None  # as if dask[distributed] were not installed
import budgeted
from joblib import Parallel, delayed, parallel_config
with parallel_config("budgeted-dask"):
    try:
        Parallel()(delayed(abs)(-1) for _ in range(2))
    except ImportError as exc:
        print("ImportError:", exc)
try:
    import budgeted.distributed.seats  # any module of the package: the same error
except ImportError as exc:
    print("ImportError:", exc)
"""

_NO_CLIENT = """
import budgeted, joblib
from joblib import Parallel, delayed, parallel_config
with parallel_config("budgeted-dask"):  # building the backend is no error
    uses = (
        lambda: Parallel()(delayed(abs)(-1) for _ in range(2)),
        lambda: joblib.effective_n_jobs(-1),
    )
    for use in uses:
        try:
            use()
        except ValueError as exc:
            print("ValueError:", repr(str(exc)))
"""


def _python(code: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_clear_errors_without_dask_and_without_client():
    errors = _python(_NO_DASK).splitlines()
    assert len(errors) == 2
    assert all('pip install "budgeted[dask]"' in line for line in errors)
    lines = _python(_NO_CLIENT).splitlines()
    assert len(lines) == 2  # the call and effective_n_jobs both raise
    for line in lines:
        # joblib's Dask backend's words and type first, then budgeted's
        assert line.startswith("ValueError: 'To use Joblib with Dask first create")
        assert '\\n\\nThe "budgeted-dask" joblib backend needs a Dask Client' in line
        assert "Client(LocalCluster())" in line


def test_default_client_is_looked_up_when_used_keeping_joblib_settings(
    client1, client2
):
    import distributed

    backend = BudgetedDaskBackend(n_cpus=8)  # no Client looked up yet
    assert not hasattr(backend, "client")
    with parallel_config("budgeted-dask", inner_max_num_threads=3):
        probes = Parallel()(delayed(probe_task)() for _ in range(2))
    default = distributed.get_client()
    assert {p.pid for p in probes} <= set(worker_pids(default).values())
    assert [p.pools["openmp"] for p in probes] == [3, 3]


def test_import_budgeted_does_not_import_dask():
    out = _python(
        "import sys, budgeted, joblib\n"
        "print('budgeted-dask' in joblib.parallel.BACKENDS, 'distributed' in "
        "sys.modules)"
    )
    assert out.split() == ["True", "False"]


# -- the documented example --
def test_example_script_runs():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "dask_gridsearch.py")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "best parameters: {'max_depth': " in run.stdout
    # 2 workers x 1 thread on this host, planned for the CPUs measured here
    expected = set(split_budget(usable_cpus(), 2))
    assert f"budget seen by tasks: {expected}" in run.stdout


# -- a single worker thread in the whole cluster --
def test_single_worker_thread_still_runs_on_the_cluster(client1):
    cluster = _CLUSTERS["2x1"][0]
    cluster.scale(1)
    deadline = time.monotonic() + 30
    while len(client1.ncores()) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(client1.ncores().values()) == 1
    probes = run_probes(client1, 3, None, n_cpus=8)
    assert {p.pid for p in probes} == set(worker_pids(client1).values())
    assert os.getpid() not in {p.pid for p in probes}
    assert {p.pools["openmp"] for p in probes} == {8}


def test_no_cluster_process_left_after_closing(client1, client2):
    pids = _close_all()
    assert len(pids) >= 3  # 2x1 (scaled down to one worker) and 2x2
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if psutil.pid_exists(p)]
    new = _children() - _CHILDREN_BEFORE
    assert [p for p in new if _is_worker_process(p)] == []


def _is_worker_process(pid: int) -> bool:
    """A process spawned by a nanny (multiprocessing's spawn entry point)."""
    try:
        return "spawn_main" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
