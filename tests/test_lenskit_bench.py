"""The lenskit benchmark runs end to end at a tiny size (no timing asserted)."""

from __future__ import annotations

import numpy as np
from benchmarks import bench_lenskit

from test_lenskit_invoker import config  # noqa: F401  (2 workers, 3 threads)


def test_every_variant_runs_checks_its_results_and_measures_memory():
    timings = bench_lenskit.run(size=200, n_calls=30, pickle_calls=6, repeats=1)
    assert [t.label for t in timings] == [
        "invoker",
        "invoker-warm",
        "joblib-memmap",
        "joblib-pickle",
        "sequential",
    ]
    for t in timings:
        assert len(t.times) == 1 and t.times[0] > 0
        assert t.extra["calls"] == (6 if t.label == "joblib-pickle" else 30)
        assert t.extra["peak_pss_mb"] > 0 and t.extra["peak_rss_mb"] > 0
    table = bench_lenskit.per_call_table(timings)
    assert table.count("\n") == 1 + len(timings)


def test_block_product_takes_a_tenth_of_the_rows():
    model = np.arange(400.0).reshape(20, 20)
    v = np.ones(20)
    np.testing.assert_allclose(bench_lenskit.block_product(model, 1, v), model[2:4] @ v)
