"""The benchmark harness runs end to end, and a hung child is really killed.

Tiny sizes only; no timing is asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import math
import os
import time

import psutil
import pytest
from benchmarks.__main__ import main
from benchmarks.common import Timing, measure, ratio_table, save_results
from benchmarks.report import evaluate_targets, markdown_report
from benchmarks.timed_child import ChildHung, TimedChild
from benchmarks.variants import VARIANTS
from benchmarks.workloads import WORKLOADS


def test_measure_times_only_the_repeats():
    calls = []
    timing = measure(
        "x", lambda: calls.append(time.perf_counter()), repeats=3, warmup=2
    )
    assert len(calls) == 5
    assert len(timing.times) == 3
    assert all(t >= 0 for t in timing.times)
    assert timing.min <= timing.median <= timing.max


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"repeats": 0}, ValueError),
        ({"warmup": -1}, ValueError),
        ({"repeats": 1.5}, TypeError),
    ],
)
def test_measure_rejects_bad_counts(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        measure("x", lambda: None, **kwargs)


def test_ratio_table_divides_by_the_best_median():
    table = ratio_table(
        [
            Timing("a", [2.0, 4.0, 3.0]),
            Timing("b", [1.5]),
            Timing("c", extra={"status": "hung"}),
        ],
        title="t",
    )
    rows = {
        line.split("|")[1].strip(): line
        for line in table.splitlines()
        if line.startswith("| ")
    }
    assert rows["a"].split("|")[2:6] == [" 3.000 ", " 2.000 ", " 4.000 ", " 2.00 "]
    assert rows["b"].split("|")[5].strip() == "1.00"
    assert "hung" in rows["c"]
    assert table.startswith("### t")


def test_save_results_writes_json_with_the_machine(tmp_path):
    path = save_results("unit", {"timings": [Timing("a", [1.0])]}, out_dir=tmp_path)
    document = json.loads(path.read_text())
    assert path == tmp_path / "unit.json"
    assert document["timings"][0]["median"] == 1.0
    machine = document["machine"]
    assert machine["cpu_count"] == psutil.cpu_count()
    assert machine["versions"]["joblib"]
    assert any(pool["user_api"] == "blas" for pool in machine["thread_pools"])


# A cold first run of a variant on a loaded machine took over the default
# 10 s limit: hang detection has its own test below, so these runs get time.
TINY = ["--scale", "0.01", "--repeats", "2", "--warmup", "0", "--time-limit", "300"]


def _check_timings(result: dict, labels: list[str], repeats: int = 2) -> None:
    assert [t["label"] for t in result["timings"]] == labels
    for timing in result["timings"]:
        assert timing["extra"] == {}, timing["extra"]
        assert len(timing["times"]) == repeats
        assert all(t > 0 and math.isfinite(t) for t in timing["times"])


def test_harness_runs_every_variant_end_to_end(tmp_path, capsys):
    workloads = ["blas_tail3", "tiny_tasks"]
    argv = [*TINY, "--out", str(tmp_path), "--name", "smoke"]
    assert main([*argv, "--workloads", ",".join(workloads)]) == 0
    document = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["name"] for r in document["results"]] == workloads
    for result in document["results"]:
        _check_timings(result, list(WORKLOADS[result["name"]].variants))
    assert document["machine"]["versions"]["budgeted"]
    assert [row["target"] for row in document["targets"]] == [
        "3 BLAS tasks on n_jobs=2: budgeted >= 1.25x faster than loky",
        "10^4 tiny tasks: budgeted not slower than loky",
    ]
    assert (tmp_path / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ".. csv-table:: blas_tail3" in (tmp_path / "smoke.rst").read_text()
    out = capsys.readouterr().out
    assert "| budgeted-threads |" in out and "### targets" in out


def test_harness_runs_the_hand_limited_thread_target(tmp_path):
    variants = "budgeted-threads,threading-omp1"  # in the workload's order
    argv = [*TINY, "--repeats", "1", "--out", str(tmp_path), "--name", "hgb"]
    argv.append("--no-plot")
    assert main([*argv, "--workloads", "hgb_grid", "--variants", variants]) == 0
    (result,) = json.loads((tmp_path / "hgb.json").read_text())["results"]
    _check_timings(result, variants.split(","), repeats=1)
    assert not (tmp_path / "hgb.png").exists()


def test_targets_compare_best_medians():
    results = [
        {
            "name": "blas_tail3",
            "timings": [Timing("loky", [1.5, 1.5]), Timing("budgeted", [1.0])],
        }
    ]
    (row,) = evaluate_targets(results)
    assert row["ratio"] == pytest.approx(1.5)
    assert row["met"] is True
    assert row["ceiling"] is None


def test_a_target_reports_what_the_hand_tuned_run_reaches():
    timings = {
        "threading": [4.0, 4.2],
        "budgeted-threads": [3.0],
        "threading-omp1": [2.9, 2.8],
        "loky": [2.7],
    }
    results = [
        {
            "name": "hgb_grid",
            "title": "grid search",
            "timings": [Timing(label, times) for label, times in timings.items()],
        }
    ]
    rows = evaluate_targets(results)
    twice = rows[0]
    assert twice["ratio"] == pytest.approx(4.1 / 3.0)
    assert twice["met"] is False
    assert twice["ceiling"] == pytest.approx(4.1 / 2.85)
    within = rows[1]  # threads within 1.1x of loky: the hand-tuned run's ratio
    assert within["ratio"] == pytest.approx(3.0 / 2.7)
    assert within["ceiling"] == pytest.approx(2.85 / 2.7)
    report = markdown_report(results, rows)
    assert "| 1.37 | >= 2 | NO | 1.44 |" in report
    assert "| 1.11 | <= 1.1 | NO | 1.06 |" in report
    assert "Hand-tuned reference" in report


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"timeout": 3}, "no answer after 3 s"),
        ({"timeout": 600, "idle_timeout": 3}, "no CPU"),
    ],
)
def test_a_hung_child_is_killed_with_its_leftovers(limits, message):
    child = TimedChild("multiprocessing")
    child.request({"cmd": "setup", "workload": "stall", "scale": 1.0}, timeout=120)
    with pytest.raises(ChildHung, match=message):
        child.request({"cmd": "run"}, **limits)
    pids = child.pids
    assert len(pids) >= 3  # the child and its forked pool workers
    assert not child.alive
    alive = [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
    ]
    assert alive == []
    assert not child.scratch.exists()
    assert any("joblib_memmapping_folder" in str(p) for p in child.removed)
    child.close()


def test_variants_and_workloads_are_consistent():
    for workload in WORKLOADS.values():
        assert set(workload.variants) <= set(VARIANTS)
        assert workload.describe(1.0)


def test_hostwide_pure_helpers():
    """bench_hostwide's parsing and ratio helpers (no program is started)."""
    from benchmarks.bench_hostwide import (
        Samples,
        balance,
        makefile_text,
        percentile,
        process_cpu,
        rotated,
        running_threads,
        summarize,
    )

    stats = [
        "12 (python) R 1 2 3",
        "13 (odd) name) S 1 2 3",  # a command with ") " in it
        "14 (a b R) D 1",
        "15 (x) R 0",
    ]
    assert running_threads(stats) == 2
    assert running_threads([]) == 0
    assert balance([2.0, 3.0]) == pytest.approx(1.5)
    assert math.isnan(balance([2.0]))
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([5], 95) == 5
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    samples = Samples()
    for count, epoch in [(1, 0.0), (3, 1.0), (2, 2.0), (5, 3.0)]:
        samples.add(count, epoch)
    summary = samples.summary(2)
    assert summary["peak"] == 5
    assert summary["above_cpus"] == 0.5
    assert samples.summary(2, window=(0.5, 2.5))["peak"] == 3
    shares = Samples()
    for epoch, cpu in [(0.0, [1.0, 1.0]), (1.0, [2.0, 1.5]), (2.0, [4.0, 2.0])]:
        shares.add(2, epoch, cpu)
    assert shares.cpu_shares((0.5, 2.5)) == pytest.approx([2 / 2.5, 0.5 / 2.5])
    assert shares.cpu_shares((1.5, 2.5)) is None  # one sample: unknown
    assert process_cpu("7 (a) b) R " + "0 " * 10 + "150 50 0 0") == pytest.approx(
        200 / os.sysconf("SC_CLK_TCK")
    )
    assert summarize([{"t": 1.0}, {"t": 3.0}, {}], ["t"])["t"]["median"] == 2.0
    text = makefile_text(3, "python grid.py")
    assert "\t+@$(GRID)" in text
    assert "OBJS = c00.o c01.o c02.o" in text
    assert "all: grid build" in text


def test_hostwide_goals_and_ratios():
    """Goals of bench_hostwide from made-up rows (no timing is measured)."""
    from benchmarks.bench_hostwide import goals, pair_table, tiny_ratio

    def run(pair, variant, times, peak):
        threads = {"samples": 3, "peak": peak, "p95": peak, "mean": 1.0}
        threads["above_cpus"] = 0.0
        return {
            "pair": pair,
            "variant": variant,
            "times": times,
            "makespan": max(times),
            "balance": max(times) / min(times),
            "cpu_seconds": 1.0,
            "threads": threads,
            "threads_computing": threads,
        }

    runs = [
        run("hgb+hgb", "loky", [10.0, 10.0], 6),
        run("hgb+hgb", "budgeted-off", [11.0, 10.0], 6),
        {**run("hgb+hgb", "budgeted-ledger", [8.0, 6.0], 2), "cpu_shares": [0.6, 0.4]},
    ]
    solos = [
        {"workload": w, "variant": v, "time": 4.0}
        for w in ("hgb", "blas")
        for v in ("loky", "budgeted-off", "budgeted-ledger")
    ]
    rows, table = pair_table(runs, solos, cpus=2)
    ledger = next(r for r in rows if r["variant"] == "budgeted-ledger")
    assert ledger["makespan_vs_loky"] == pytest.approx(0.8)
    assert ledger["balance"] == pytest.approx(8 / 6)
    assert ledger["share_balance"] == pytest.approx(1.5)
    assert "| hgb+hgb | budgeted-ledger | 8.00 | 0.80 |" in table
    tiny = {"ledger-on": [1.02, 1.0, 5.0], "ledger-off": [1.0, 0.9, 1.1]}
    assert tiny_ratio(tiny) == pytest.approx(1.02)
    found = {g["goal"]: g for g in goals(rows, tiny, cpus=2)}
    assert found["makespan"]["met"] is True
    assert found["balance"]["met"] is False  # 1.33 > 1.2
    assert found["threads"]["met"] is True
    assert found["tiny"]["met"] is True
