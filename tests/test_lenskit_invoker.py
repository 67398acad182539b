"""budgeted.lenskit invokers with worker processes, observed in the workers."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from budgeted.diagnostics import probe
from budgeted.lenskit import get_parallel_config, initialize, invoke_progress, invoker
from budgeted.lenskit.config import replace_config
from budgeted.lenskit.sharing import NAME_PREFIX

SHM = Path("/dev/shm")


@pytest.fixture(autouse=True)
def config():
    """Two worker processes with three native threads each, whatever the CPUs."""
    replace_config(None)
    with threadpool_limits(limits=None):
        yield initialize(processes=2, threads=1, backend_threads=1, child_threads=3)
    replace_config(None)


def our_segments() -> list[str]:
    """Shared memory segments made by this (test) process."""
    prefix = f"{NAME_PREFIX}{os.getpid()}-"
    return sorted(p.name for p in SHM.iterdir() if p.name.startswith(prefix))


def mapping_of(address: int) -> str:
    """The file mapped at ``address`` in this process (from /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else ""
    raise LookupError(hex(address))


def matvec(model, v):
    return model @ v


def pid_of_call(model, _item):
    return os.getpid()


class CountingModel:
    """Appends the PID of every process that unpickles it to a file."""

    getstate_calls = 0

    def __init__(self, log: Path, matrix: np.ndarray) -> None:
        self.log = log
        self.matrix = matrix

    def __getstate__(self):
        type(self).getstate_calls += 1
        return self.__dict__

    def __setstate__(self, state):
        with open(state["log"], "a") as f:
            f.write(f"{os.getpid()}\n")
        self.__dict__.update(state)


def wait_then_pid(model, barrier):
    if barrier is not None:
        barrier.wait()  # both workers must be running at once
    return os.getpid()


@pytest.mark.parametrize("n_jobs", [None, 1, 2])
def test_results_equal_model_times_v_in_order(n_jobs):
    rng = np.random.default_rng(0)
    model = rng.standard_normal((40, 30))
    vectors = [rng.standard_normal(30) for _ in range(50)]
    with invoker(model, matvec, n_jobs=n_jobs) as inv:
        results = list(inv.map(vectors))
    assert len(results) == 50
    for result, v in zip(results, vectors, strict=True):
        np.testing.assert_allclose(result, model @ v)


def test_default_jobs_run_in_worker_processes():
    assert get_parallel_config().processes == 2
    with invoker(None, pid_of_call, chunksize=1) as inv:
        pids = set(inv.map(range(20)))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_model_is_pickled_once_and_unpickled_once_per_worker(tmp_path, barrier_factory):
    log = tmp_path / "unpickled"
    model = CountingModel(log, np.ones(3))
    CountingModel.getstate_calls = 0
    barrier = barrier_factory(2)
    with invoker(model, wait_then_pid, n_jobs=2, chunksize=1) as inv:
        pids = list(inv.map([barrier, barrier]))
        more = list(inv.map([None] * 10))  # more calls, no new unpickling
    assert CountingModel.getstate_calls == 1
    assert len(set(pids)) == 2 and set(more) <= set(pids)
    assert sorted(log.read_text().split()) == sorted(str(p) for p in set(pids))


def test_shared_memory_is_gone_after_the_with_block():
    assert our_segments() == []
    with invoker(np.eye(50), matvec, n_jobs=2) as inv:
        assert len(our_segments()) == 1
        list(inv.map([np.ones(50)] * 3))
    assert our_segments() == []


def test_shutdown_is_idempotent_and_releases_without_use():
    inv = invoker(np.eye(3), matvec, n_jobs=2)
    assert len(our_segments()) == 1
    inv.shutdown()
    inv.shutdown()
    assert our_segments() == []


def test_an_unpicklable_model_fails_early_and_leaves_nothing():
    import threading

    with pytest.raises(TypeError, match="pickle"):
        invoker(threading.Lock(), matvec, n_jobs=2, progress=True)
    assert our_segments() == []


def test_input_is_consumed_a_bounded_number_of_items_ahead():
    pulled = []

    def endless():
        for x in itertools.count():
            pulled.append(x)
            yield x

    with invoker(None, identity, n_jobs=2, chunksize=3) as inv:
        first = list(itertools.islice(inv.map(endless()), 5))
    assert first == [0, 1, 2, 3, 4]
    assert len(pulled) <= 5 + 2 * 2 * 3  # a window of 2 chunks per worker


def identity(model, x):
    return x


def fail_on_three(model, x):
    if x == 3:
        raise ZeroDivisionError(f"item {x}")
    return x


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_exception_is_raised_with_its_type_when_reached(n_jobs):
    with invoker(None, fail_on_three, n_jobs=n_jobs, chunksize=2) as inv:
        results = inv.map(range(6))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ZeroDivisionError, match="item 3"):
            next(results)


def observe_threads(model, _item):
    import sklearn.utils._openmp_helpers  # noqa: F401  (load OpenMP)

    return probe(), get_parallel_config()


def test_workers_run_one_caller_thread_and_child_threads_natively():
    with invoker(None, observe_threads, n_jobs=2) as inv:
        seen = list(inv.map(range(4)))
    for worker_probe, worker_config in seen:
        assert worker_probe.pid != os.getpid()
        assert worker_probe.pools["openblas"] == worker_probe.pools["openmp"] == 3
        assert worker_probe.env["OMP_NUM_THREADS"] == "3"
        assert worker_probe.budget == 3
        assert worker_config == (1, 1, 3, 1)  # a nested invoker runs in-process


def blas_threads(model, _item):
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return os.getpid(), blas[0]["num_threads"]


def test_more_jobs_than_configured_share_the_cpus(monkeypatch):
    monkeypatch.setattr("budgeted.lenskit.config.usable_cpus", lambda: 6)
    replace_config(None)
    assert initialize(processes=1, threads=1, backend_threads=1).child_threads == 4
    with invoker(None, blas_threads, n_jobs=3, chunksize=1) as inv:
        seen = list(inv.map(range(6)))
    assert {threads for _, threads in seen} == {2}  # 6 CPUs // 3 workers
    assert os.getpid() not in {pid for pid, _ in seen}


def nested_pids(model, _item):
    with invoker(model, pid_of_call) as inner:
        return os.getpid(), set(inner.map(range(3)))


def test_nested_invoker_runs_inside_the_worker():
    with invoker(None, nested_pids, n_jobs=2) as inv:
        for pid, inner in inv.map(range(2)):
            assert inner == {pid} and pid != os.getpid()


def log_item(model, x):
    logging.getLogger("lk.test.worker").info("item %d from %d", x, os.getpid())
    logging.getLogger("lk.test.worker").debug("too verbose %d", x)
    return os.getpid()


def test_worker_logs_reach_the_parent_handlers(caplog):
    caplog.set_level(logging.INFO, logger="lk.test.worker")
    with invoker(None, log_item, n_jobs=2, chunksize=1) as inv:
        pids = list(inv.map(range(8)))
    records = [r for r in caplog.records if r.name == "lk.test.worker"]
    assert sorted(r.getMessage() for r in records) == sorted(
        f"item {x} from {pid}" for x, pid in enumerate(pids)
    )
    assert {r.process for r in records} == set(pids)
    assert os.getpid() not in pids


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_progress_counts_every_finished_item(n_jobs):
    with invoke_progress(label="matvec", bar=True) as progress:
        with invoker(np.eye(4), matvec, n_jobs=n_jobs, progress=progress) as inv:
            results = inv.map([np.ones(4)] * 30)
            assert progress.total == progress.tqdm.total == 30
            assert len(list(results)) == 30
        assert progress.n == progress.tqdm.n == 30


def test_progress_counts_items_done_before_a_failure():
    progress = invoke_progress(bar=False)
    inv = invoker(None, fail_on_three, n_jobs=2, chunksize=5, progress=progress)
    with inv, pytest.raises(ZeroDivisionError):
        list(inv.map(range(5)))
    assert progress.n == 3 and progress.total == 5


def test_no_warning_or_leak_printed_at_exit(tmp_path):
    code = textwrap.dedent(
        """
        import numpy as np
        from budgeted.lenskit import initialize, invoker
        if __name__ == "__main__":
            initialize(processes=2, child_threads=1)
            with invoker(np.ones((200, 200)), lambda m, v: m @ v) as inv:
                print(sum(r.sum() for r in inv.map([np.ones(200)] * 20)))
        """
    )
    script = tmp_path / "script.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["800000.0"]
    assert out.stderr == ""  # no "leaked shared_memory", no ignored exception
