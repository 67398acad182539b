"""budgeted.lenskit called exactly as LensKit's own code calls lenskit.parallel.

Call sites are copied from LensKit's source (lenskit-team/lkpy), each test
naming the file and version it comes from:

* "2025.1.1": the PyPI release 2025.1.1, the newest with ``WorkChunks`` and
  the four-knob ``ParallelConfig`` (``lenskit/parallel/*.py``,
  ``lenskit/batch/_runner.py``, ``lenskit/als/_explicit.py``);
* "lkpy 2024": the development line the ``lenskit.parallel`` documentation
  describes (progress_api, manylog), the only one with ``invoke_progress`` and
  ``invoker(..., progress)``; no release has them.

Assertions look at real behaviour: results, worker PIDs, and the budget and
configuration seen inside the workers.
"""

from __future__ import annotations

import itertools
import logging
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import budgeted
from budgeted.lenskit import (
    ModelOpInvoker,
    ParallelConfig,
    WorkChunks,
    ensure_parallel_init,
    get_parallel_config,
    initialize,
    invoke_progress,
    invoker,
)

_logger = logging.getLogger(__name__)
_log = _logger

pytestmark = [
    pytest.mark.filterwarnings("ignore:could not set torch inter-op threads"),
    pytest.mark.usefixtures("fresh_lenskit_config"),  # see conftest
]


def blas_threads() -> int:
    return next(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def seen_in_worker(model, task):
    """What a call sees: its process, budget, BLAS threads and configuration."""
    return (
        task,
        os.getpid(),
        budgeted.current_budget(),
        blas_threads(),
        tuple(get_parallel_config()),
        float(model.sum()),
    )


# --- invoke_progress and invoker, as LensKit's batch code calls them -------


def _predict_user(model, req):
    user, items = req
    return [(user, item, float(model[item])) for item in items], os.getpid()


def test_legacy_predict_call_sites():
    # lkpy 2024, lenskit/batch/_predict.py (legacy predict):
    #     with (
    #         invoke_progress(_logger, "predictions", nusers, unit="user") as progress,
    #         invoker(algo, _predict_user, n_jobs=n_jobs, progress=progress) as worker,
    #     ):
    #         results = worker.map(
    #             (user, udf.copy()) for (user, udf) in pairs.groupby("user"))
    # (pandas' groupby replaced by itertools.groupby on sorted pairs)
    initialize(processes=2, threads=1, backend_threads=1, child_threads=1)
    algo, n_jobs = np.arange(10.0), None
    pairs = sorted((u, i) for u in range(6) for i in range(u % 3 + 1))
    nusers = len({u for u, _ in pairs})
    with (
        invoke_progress(_logger, "predictions", nusers, unit="user") as progress,
        invoker(algo, _predict_user, n_jobs=n_jobs, progress=progress) as worker,
    ):
        del algo  # maybe free some memory
        groups = itertools.groupby(pairs, key=lambda p: p[0])
        results = list(
            worker.map((user, [i for _, i in udf]) for (user, udf) in groups)
        )
    rows = [row for rows, _ in results for row in rows]
    assert rows == [(u, i, float(i)) for u, i in pairs]
    assert os.getpid() not in {pid for _, pid in results}  # n_jobs=None: 2 procs
    assert (progress.label, progress.unit) == ("predictions", "user")
    assert progress.n == progress.total == nusers


def _run_pipeline(ctx, req):
    (model, invocations), (user, test_items) = ctx, req
    return user, {name: seen_in_worker(model, test_items) for name in invocations}


def test_batch_pipeline_runner_call_sites():
    # lkpy 2024, lenskit/batch/_runner.py (BatchPipelineRunner.run):
    #     with (
    #         invoke_progress(_log, "querying", n_users, unit="query") as progress,
    #         invoker(
    #             (pipeline, self.invocations), _run_pipeline, n_jobs=self.n_jobs,
    #             progress=progress
    #         ) as worker,
    #     ):
    #         for user, outs in worker.map(test_data.items()):
    initialize(processes=4, threads=1, backend_threads=1, child_threads=2)
    pipeline, invocations, n_jobs = np.ones(4), ["recommendations"], 2
    test_data = {f"u{i}": i for i in range(8)}
    n_users = len(test_data)
    results = {}
    with (
        invoke_progress(_log, "querying", n_users, unit="query") as progress,
        invoker(
            (pipeline, invocations), _run_pipeline, n_jobs=n_jobs, progress=progress
        ) as worker,
    ):
        del pipeline
        for user, outs in worker.map(test_data.items()):
            results[user] = outs["recommendations"]
    assert [r[0] for r in results.values()] == list(range(8))
    pids = {r[1] for r in results.values()}
    assert len(pids) <= 2 and os.getpid() not in pids
    # child_threads given: each worker's pools hold 2 threads, its config is
    # LensKit's worker configuration ParallelConfig(1, 1, child_threads, 1)
    assert {r[2:5] for r in results.values()} == {(2, 2, (1, 1, 2, 1))}
    assert progress.n == n_users


def test_2025_batch_runner_call_site_without_progress():
    # 2025.1.1, lenskit/batch/_runner.py:
    #     invoker((pipeline, self.invocations), _run_pipeline, n_jobs=self.n_jobs)
    #     as worker ... for key, outs in worker.map(test_iter):
    initialize(processes=2, threads=1, backend_threads=1, child_threads=1)
    pipeline, invocations = np.ones(3), ["scores"]
    test_iter = ((f"u{i}", i) for i in range(5))
    with invoker((pipeline, invocations), _run_pipeline, n_jobs=None) as worker:
        keys = [key for key, outs in worker.map(test_iter) if outs["scores"][5] == 3]
    assert keys == [f"u{i}" for i in range(5)]


def test_in_process_invoker_progress_states():
    # lkpy 2024, lenskit/parallel/sequential.py and worker.py report states:
    #     self.progress.update(1, "in-progress")
    #     self.progress.update(1, "finished", "in-progress")
    # and pool.py: self.progress.update(1, "dispatched")
    with invoke_progress(_logger, "items", 2, unit="item", bar=False) as progress:
        progress.update(1, "dispatched")
        progress.update(1, "in-progress", "dispatched")
        progress.update(1, "finished", "in-progress")
        progress.set_label("renamed")  # progress_api's Progress method
    assert (progress.n, progress.label) == (1, "renamed")


class ProgressApiLike:
    """A stand-in for a progress_api ``Progress`` (LensKit passes those)."""

    def __init__(self):
        self.updates = []

    def update(self, n=1, state=None, src_state=None):
        self.updates.append((n, state, src_state))

    def finish(self):
        pass


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_invoker_accepts_a_progress_api_progress(n_jobs):
    # lkpy 2024, lenskit/parallel/invoker.py: invoker(model, func, n_jobs=None,
    # progress: Progress | None = None); a progress_api bar, not only ours
    initialize(processes=2, threads=1, backend_threads=1, child_threads=1)
    progress = ProgressApiLike()
    with invoker(np.ones(2), seen_in_worker, n_jobs, progress) as worker:
        assert [r[0] for r in worker.map(range(5))] == list(range(5))
    assert sum(n for n, _, _ in progress.updates) == 5
    assert {state for _, state, _ in progress.updates} == {"finished"}


def test_invoke_progress_positional_logger_first():
    # lkpy 2024, lenskit/batch/_recommend.py:
    #     invoke_progress(_logger, "recommending", len(users), unit="user")
    users = [1, 2, 3, 4]
    with invoke_progress(_logger, "recommending", len(users), unit="user") as pb:
        assert (pb.label, pb.total, pb.unit) == ("recommending", 4, "user")
        pb.update()
        pb.update(1, state="dispatched")  # progress_api states: not finished
        assert pb.n == 1


def test_invoke_progress_logger_name_and_finish():
    pb = invoke_progress("lenskit.batch", "recs", 2, bar=False)
    pb.update(2)
    pb.finish()  # progress_api's name for close()
    assert pb.n == 2


# --- the configuration, as LensKit's code sets and reads it ----------------


def test_worker_initialize_with_a_positional_config():
    # 2025.1.1, lenskit/parallel/pool.py (LensKitProcess.run):
    #     initialize(self._parallel_config)
    # with ParallelConfig(1, 1, get_parallel_config().child_threads, 1)
    config = ParallelConfig(1, 1, 3, 1)
    assert initialize(config) == config == get_parallel_config()
    assert blas_threads() == 3  # backend_threads applied, as LensKit does


def test_worker_initialize_with_keywords():
    # lkpy 2024, lenskit/parallel/worker.py:
    #     init_parallel(processes=1, threads=1, backend_threads=cfg.threads,
    #                   child_threads=1)
    initialize(processes=1, threads=1, backend_threads=2, child_threads=1)
    assert get_parallel_config() == ParallelConfig(1, 1, 2, 1)
    assert blas_threads() == 2


def test_ensure_parallel_init_then_read_the_config(monkeypatch):
    # 2025.1.1, lenskit/knn/item.py: ensure_parallel_init(); invoker.py:
    #     n_jobs = get_parallel_config().processes
    monkeypatch.setenv("LK_NUM_PROCS", "3")
    monkeypatch.setenv("LK_NUM_BACKEND_THREADS", "2")
    assert ensure_parallel_init() is None
    cfg = get_parallel_config()
    assert (cfg.processes, cfg.backend_threads) == (3, 2)
    assert blas_threads() == 2


def test_parallel_config_as_lenskit_builds_and_reads_it():
    # 2025.1.1, lenskit/parallel/config.py (subprocess_config):
    #     ParallelConfig(processes=processes or 1, threads=threads or 1,
    #                    backend_threads=backend_threads or cfg.child_threads,
    #                    child_threads=child_threads or 1)
    cfg = ParallelConfig(4, 8, 2, 3)
    sub = ParallelConfig(
        processes=1, threads=1, backend_threads=cfg.child_threads, child_threads=1
    )
    assert sub == ParallelConfig(1, 1, 3, 1)
    assert cfg.total_threads == 16  # threads * backend_threads
    assert cfg.env_vars() == {
        "LK_NUM_PROCS": "4",
        "LK_NUM_THREADS": "8",
        "LK_NUM_BACKEND_THREADS": "2",
        "LK_NUM_CHILD_THREADS": "3",
    }


def test_worker_parallel_sets_the_workers_budget_and_config():
    # 2025.1.1, lenskit/parallel/invoker.py:
    #     ProcessPoolOpInvoker(model, func, n_jobs, worker_parallel=worker_parallel)
    initialize(processes=2, threads=1, backend_threads=1, child_threads=1)
    worker_parallel = ParallelConfig(1, 1, 2, 1)
    with invoker(np.ones(3), seen_in_worker, 2, worker_parallel=worker_parallel) as w:
        seen = list(w.map(range(6)))
    assert {s[2:5] for s in seen} == {(2, 2, (1, 1, 2, 1))}
    assert os.getpid() not in {s[1] for s in seen}


# --- ModelOpInvoker and WorkChunks -----------------------------------------


class LensKitInProcessOpInvoker(ModelOpInvoker):
    """LensKit 2025.1.1's lenskit/parallel/sequential.py, on our base class."""

    def __init__(self, model, func):
        self.model = model
        self.function = func

    def map(self, tasks):
        for task in tasks:
            res = self.function(self.model, task)
            yield res

    def shutdown(self):
        del self.model


def test_a_lenskit_style_subclass_and_generic_alias():
    # 2025.1.1: class InProcessOpInvoker(ModelOpInvoker[A, R], Generic[M, A, R])
    assert ModelOpInvoker[int, float].__origin__ is ModelOpInvoker
    with LensKitInProcessOpInvoker(10, lambda m, x: m * x) as inv:
        assert list(inv.map([1, 2])) == [10, 20]
    assert not hasattr(inv, "model")  # __exit__ called shutdown()


def test_map_takes_lenskit_keyword_tasks():
    # 2025.1.1, ModelOpInvoker.map(self, tasks: Iterable[A]) -> Iterator[R]
    initialize(processes=1, threads=1, backend_threads=1, child_threads=1)
    with invoker(3, lambda m, x: m + x) as inv:
        assert list(inv.map(tasks=[1, 2])) == [4, 5]
        with pytest.raises(TypeError, match="tasks"):
            inv.map()  # Python's own error, as for LensKit's map


def test_work_chunks_as_als_training_uses_them():
    # 2025.1.1, lenskit/als/_explicit.py:
    #     chunks = WorkChunks.create(context.nrows)
    #     for start in range(0, ctx.nrows, chunking.chunk_size):
    #         end = min(start + chunking.chunk_size, ctx.nrows)
    nrows = np.int64(250_123)  # a numpy count, as a matrix's shape gives
    chunking = WorkChunks.create(nrows)
    spans = [
        (start, min(start + chunking.chunk_size, nrows))
        for start in range(0, nrows, chunking.chunk_size)
    ]
    assert tuple(chunking) == (250_123, 250, 1001) and len(spans) == 1001
    assert spans == [(r.start, r.stop) for r in chunking.ranges()]
    # chunking.py: WorkChunks.create(njobs) -> cls(njobs, csize, count)
    assert WorkChunks.create(njobs=99) == (99, 99, 1)


# --- errors: LensKit's type, LensKit's words first --------------------------


@pytest.mark.parametrize("raw", ["abc", "1.5", " "])
def test_bad_environment_value_raises_lenskits_value_error(monkeypatch, raw):
    # 2025.1.1, config.py: if processes is None and nprocs: processes = int(nprocs)
    monkeypatch.setenv("LK_NUM_PROCS", raw)
    expected = f"^invalid literal for int\\(\\) with base 10: {raw!r}; LK_NUM_PROCS"
    with pytest.raises(ValueError, match=expected):
        initialize()
    monkeypatch.setenv("LK_NUM_PROCS", "")  # empty means unset, as in LensKit
    assert initialize().processes == min(budgeted.usable_cpus(), 4)


def test_a_config_that_is_not_one_raises_lenskits_attribute_error():
    # 2025.1.1: _config = config; threadpool_limits(_config.backend_threads, ...)
    with pytest.raises(AttributeError, match="^'int' object has no attribute"):
        initialize(2)  # budgeted's old positional processes: keyword-only now
    assert initialize(processes=2).processes == 2  # nothing was set


@pytest.mark.parametrize(
    "n_jobs, error, words",
    [
        (0, ValueError, "max_workers must be greater than 0"),
        ("2", TypeError, "'<=' not supported between instances of 'str' and 'int'"),
        (1.5, TypeError, "'float' object cannot be interpreted as an integer"),
        ("ray", RuntimeError, "ray backend not available"),
    ],
)
def test_bad_n_jobs_raise_as_lenskit(n_jobs, error, words):
    # 2025.1.1, invoker.py: ProcessPoolExecutor(n_jobs, ...) and, for "ray",
    #     raise RuntimeError("ray backend not available")
    initialize(processes=1, threads=1, backend_threads=1, child_threads=1)
    with pytest.raises(error) as caught:
        invoker(None, seen_in_worker, n_jobs)
    assert str(caught.value).startswith(words)
    if error is TypeError:  # budgeted raised ValueError: still caught as one
        assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("njobs, kind", [("10", "str"), (None, "NoneType")])
def test_work_chunks_of_no_number_raise_lenskits_type_error(njobs, kind):
    # 2025.1.1, chunking.py: if njobs < MIN_CHUNKABLE:
    words = f"'<' not supported between instances of '{kind}' and 'int'"
    with pytest.raises(TypeError) as caught:
        WorkChunks.create(njobs)
    assert str(caught.value).startswith(words)
    assert isinstance(caught.value, ValueError)  # budgeted's earlier type


def test_second_initialize_uses_lenskits_words():
    # 2025.1.1: if _config: _log.warning("parallelism already initialized")
    initialize(processes=2, threads=1, backend_threads=1, child_threads=1)
    with pytest.warns(RuntimeWarning, match="^parallelism already initialized"):
        assert initialize(processes=3).processes == 2


def test_results_after_shutdown_raise_a_clear_error():
    initialize(processes=2, threads=1, backend_threads=1, child_threads=1)
    with invoker(np.ones(1), seen_in_worker, 2, chunksize=1) as worker:
        results = worker.map(range(10))
    with pytest.raises(RuntimeError, match="shut down"):
        list(results)
