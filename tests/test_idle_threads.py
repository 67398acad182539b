"""Idle library threads of a worker sleep as soon as its call ends.

OpenBLAS's threads busy-wait 2**28 cycles (about 0.1 s) after every call by
default: a worker whose batch ended (and gave its CPUs, and host-wide tokens,
back) would go on burning a CPU for that long. budgeted's workers start with
a short idle time (``OPENBLAS_THREAD_TIMEOUT``) unless the user set one.
The tests measure what a worker burns while it sleeps after a product.
"""

from __future__ import annotations

import os
import time

import pytest
from joblib import Parallel, delayed, parallel_config

from budgeted import budgeted_executor
from budgeted.threadlibs import idle_env

#: CPU seconds a worker may burn in :data:`SLEEP` s after its product: the
#: rebalancer's polls and Python's own; an OpenBLAS thread that spins burns
#: its whole share of a CPU for 0.1 s.
QUIET = 0.02
SLEEP = 0.3


def _cpu_while_sleeping_after_a_product():
    """(OpenBLAS threads, CPU seconds this process burned in SLEEP s after)."""
    import numpy as np
    from threadpoolctl import threadpool_info

    a = np.ones((800, 800))
    for _ in range(3):
        a @ a
    before = time.process_time()
    time.sleep(SLEEP)
    burned = time.process_time() - before
    threads = max(
        (
            i["num_threads"]
            for i in threadpool_info()
            if i["internal_api"] == "openblas"
        ),
        default=0,
    )
    return threads, burned, os.environ.get("OPENBLAS_THREAD_TIMEOUT")


def _run(kind: str, monkeypatch):
    """One worker's view, on a budget of 2 threads whatever the machine."""
    # no host tokens: another program's would shrink the budget
    monkeypatch.setenv("BUDGETED_LEDGER", "off")
    monkeypatch.setenv("BUDGETED_JOBSERVER", "0")
    if kind == "backend":
        with parallel_config("budgeted", n_jobs=2, n_cpus=4):
            calls = (delayed(_cpu_while_sleeping_after_a_product)() for _ in range(2))
            return Parallel()(calls)[0]
    with budgeted_executor(1, n_cpus=2) as pool:
        return pool.submit(_cpu_while_sleeping_after_a_product).result()


@pytest.mark.parametrize("kind", ["backend", "executor"])
def test_idle_blas_threads_of_a_worker_sleep(monkeypatch, kind):
    for var in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    threads, burned, setting = _run(kind, monkeypatch)
    assert threads >= 2
    assert setting == "20"
    assert burned < QUIET


def test_the_users_idle_time_is_kept_and_spins(monkeypatch):
    """The control: with OpenBLAS's default (set by the user), it spins."""
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    threads, burned, setting = _run("backend", monkeypatch)
    assert threads >= 2 and setting == "28"
    assert burned > QUIET


def test_idle_env_leaves_the_users_settings_and_pins_alone():
    assert idle_env(environ={}) == {"OPENBLAS_THREAD_TIMEOUT": "20"}
    assert idle_env(environ={"GOTO_THREAD_TIMEOUT": "28"}) == {}
    assert idle_env(environ={"OPENBLAS_THREAD_TIMEOUT": "4"}) == {}
    assert idle_env(frozenset({"openblas"}), environ={}) == {}
