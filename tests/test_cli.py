"""`python -m budgeted`: run as a user would, in a subprocess."""

import json
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "budgeted", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def test_info_json_reports_limits_pools_folder_and_plan():
    result = run("info", "--n-jobs", "6", "--n-cpus", "16", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["plan"] == {"n_cpus": 16, "n_jobs": 6, "budgets": [3, 3, 3, 3, 2, 2]}
    assert report["limited_by"] in report["limits"]
    assert {p["internal_api"] for p in report["thread_pools"]} >= {"openblas", "openmp"}
    assert report["temp_folder"]["reason"]


def test_info_text_names_the_limiting_source(monkeypatch):
    import os

    env = {**os.environ, "LOKY_MAX_CPU_COUNT": "1"}
    result = run("info", env=env)
    assert result.returncode == 0, result.stderr
    assert "usable CPUs: 1 (set by env)" in result.stdout


def test_check_passes_and_shows_every_worker():
    result = run("check", "--n-jobs", "3", "--n-cpus", "7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "budgets [3, 2, 2]" in result.stdout
    assert result.stdout.count("[ok]") == 3
    assert "budgets hold" in result.stdout


@pytest.mark.parametrize("bad", ["0", "four"])
def test_bad_n_jobs_is_a_usage_error(bad):
    result = run("check", "--n-jobs", bad)
    assert result.returncode == 2
    assert "n_jobs" in result.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_bad_n_cpus_is_a_usage_error(bad):
    result = run("info", "--n-cpus", bad)
    assert result.returncode == 2
    assert "n_cpus" in result.stderr and bad in result.stderr
