"""After a Dask LocalCluster ran in this process, "budgeted" still budgets.

A ``LocalCluster(processes=True)`` writes Dask's nanny defaults
(``OMP_NUM_THREADS=1``...) into the client's ``os.environ``, where they stay.
They are Dask's, not the user's: a later ``"budgeted"`` call must still give
its workers their budget, and keep what the user really pinned. Each scenario
runs in a fresh interpreter whose environment the test controls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCENARIO = """
import json, os, sys, warnings
import budgeted
from budgeted.diagnostics import probe
from dask.distributed import Client, LocalCluster
from joblib import Parallel, delayed, parallel_config


def task():
    import numpy, sklearn.utils._openmp_helpers  # load OpenBLAS and OpenMP
    p = probe()
    return dict(pid=p.pid, pools=p.pools, env=p.env)


if __name__ == "__main__":
    if {user_pin!r}:
        os.environ["OPENBLAS_NUM_THREADS"] = "3"  # set after import: the user's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes={processes},
            dashboard_address=None,
        )
    Client(cluster).close()
    cluster.close()
    dask_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    after_cluster = {{v: os.environ.get(v) for v in dask_vars}}
    with parallel_config("budgeted", n_cpus=8, dynamic=False):
        probes = Parallel(n_jobs=2)(delayed(task)() for _ in range(4))
    print(json.dumps(dict(after_cluster=after_cluster, probes=probes, pid=os.getpid())))
"""

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _run(tmp_path, processes: bool, user_pin: bool, **env: str) -> dict:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO.format(processes=processes, user_pin=user_pin))
    environ = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**environ, **env},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["probes"] and all(p["pid"] != report["pid"] for p in report["probes"])
    return report


@pytest.mark.parametrize("processes", [True, False])
def test_workers_get_their_budget_after_a_local_cluster(tmp_path, processes):
    report = _run(tmp_path, processes, user_pin=False)
    # With processes, Dask's nannies really wrote their defaults here.
    expected = "1" if processes else None
    assert report["after_cluster"] == dict.fromkeys(
        ("OMP_NUM_THREADS", "MKL_NUM_THREADS"), expected
    )
    for p in report["probes"]:
        assert p["pools"]["openmp"] == p["pools"]["openblas"] == 4
        assert p["env"]["OMP_NUM_THREADS"] == p["env"]["MKL_NUM_THREADS"] == "4"


def test_user_pins_survive_a_local_cluster(tmp_path):
    # OMP_NUM_THREADS=1 before import holds Dask's own value, and is kept;
    # OPENBLAS_NUM_THREADS=3 set after import differs from Dask's, and is kept.
    report = _run(tmp_path, True, user_pin=True, OMP_NUM_THREADS="1")
    assert report["after_cluster"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for p in report["probes"]:
        assert (p["pools"]["openmp"], p["env"]["OMP_NUM_THREADS"]) == (1, "1")
        # Not raised to the budget (4); OpenBLAS caps a load-time value at the cores.
        assert p["env"]["OPENBLAS_NUM_THREADS"] == "3"
        assert p["pools"]["openblas"] < 4
        assert p["env"]["MKL_NUM_THREADS"] == "4"  # Dask's value: budgeted
