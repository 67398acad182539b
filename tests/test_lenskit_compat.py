"""budgeted.lenskit called exactly as LensKit's own code calls lenskit.parallel.

Call sites copied from lenskit-team/lkpy (2024.x, ``lenskit/parallel/invoker.py``
and LensKit's batch code).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from budgeted.lenskit import invoke_progress, invoker

_logger = logging.getLogger(__name__)


def _pid_times(model, x):
    return os.getpid(), float(model @ x)


def test_invoke_progress_positional_logger_first():
    # LensKit batch code: invoke_progress(_logger, "predictions", n, unit="user")
    with invoke_progress(_logger, "predictions", 4, unit="user", bar=False) as pb:
        assert (pb.label, pb.total, pb.unit) == ("predictions", 4, "user")
        pb.update()
        pb.update(1, state="dispatched")  # progress_api states: not finished
        assert pb.n == 1


def test_invoke_progress_logger_name_and_finish():
    pb = invoke_progress("lenskit.batch", "recs", 2, bar=False)
    pb.update(2)
    pb.finish()  # progress_api's name for close()
    assert pb.n == 2


def test_invoker_positional_progress_in_worker_processes(tmp_path):
    # lkpy invoker.py: invoker(model, func, n_jobs=None, progress=None);
    # LensKit: with invoker(model, func, n_jobs, progress) as worker:
    #              worker.map(tasks)
    model = np.arange(3.0)
    xs = [np.full(3, float(i)) for i in range(6)]
    pb = invoke_progress(_logger, "dots", len(xs), unit="item", bar=False)
    with pb, invoker(model, _pid_times, 2, pb) as worker:
        results = list(worker.map(xs))
    assert [r for _, r in results] == [3.0 * i for i in range(6)]
    assert os.getpid() not in {pid for pid, _ in results}
    assert pb.n == 6


def test_work_chunks_create_keyword_and_fields():
    # lkpy chunking.py: WorkChunks.create(njobs) -> cls(njobs, csize, count)
    from budgeted.lenskit import WorkChunks

    chunks = WorkChunks.create(njobs=250_000)
    assert chunks._fields == ("total", "chunk_size", "chunk_count")
    assert tuple(chunks) == (250_000, 250, 1000)
