"""``budgeted.hold_cpus``: work outside joblib holds host-wide CPUs too.

Two real programs on a ledger of 2 tokens, or under ``python -m budgeted run
-j 2``: A holds both CPUs in a block, B's block starts only after A's ended.
Inside a block, the thread pools the program sees are the CPUs it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_info

import budgeted
from _hostwide import BUDGETED_RUN, PYTHON, clean_env, run

_PROGRAM = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from threadpoolctl import threadpool_info
    import budgeted

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas"]

    seconds, fail = float(sys.argv[1]), sys.argv[2] == "raise"
    try:
        with budgeted.hold_cpus(n_cpus=2) as held:
            start, inside = time.monotonic(), blas_threads()
            print(json.dumps({"held": held, "start": start}), flush=True)
            time.sleep(seconds)
            end = time.monotonic()
            if fail:
                raise RuntimeError("failed inside the block")
    except RuntimeError:
        pass
    print(json.dumps({"end": end, "inside": inside, "after": blas_threads()}))
    """
)

_DRIVER = textwrap.dedent(
    """
    import json, subprocess, sys, time
    program, fail = sys.argv[1], sys.argv[2]
    a = subprocess.Popen([sys.executable, program, "1.0", fail],
                         stdout=subprocess.PIPE, text=True)
    first = json.loads(a.stdout.readline())  # A holds its CPUs
    b = subprocess.run([sys.executable, program, "0", "no"],
                       capture_output=True, text=True, timeout=60)
    last = json.loads(a.stdout.readline())
    assert a.wait(timeout=60) == 0 and b.returncode == 0, b.stderr
    b_first, b_last = map(json.loads, b.stdout.splitlines())
    print(json.dumps({"a": {**first, **last}, "b": {**b_first, **b_last}}))
    """
)


@pytest.mark.parametrize("fail", ["no", "raise"])
@pytest.mark.parametrize("where", ["ledger", "budgeted run -j 2"])
def test_a_held_block_keeps_another_programs_block_waiting(tmp_path, where, fail):
    ledger = tmp_path / "ledger"
    ledger.mkdir(mode=0o700)
    program, driver = tmp_path / "program.py", tmp_path / "driver.py"
    program.write_text(_PROGRAM)
    driver.write_text(_DRIVER)
    words = [PYTHON, str(driver), str(program), fail]
    if where == "ledger":
        done = run(words, clean_env(BUDGETED_LEDGER=str(ledger)))
    else:
        done = run([*BUDGETED_RUN, "-j", "2", "--", *words], clean_env())
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    a, b = seen["a"], seen["b"]
    assert a["held"] == 2 and set(a["inside"]) == {2}
    assert b["start"] >= a["end"]  # B waited for A's CPUs, also after a raise
    # B takes what is free when it starts: A may not have given back all yet
    assert b["held"] >= 1 and set(b["inside"]) == {b["held"]}


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_without_a_token_source_the_block_is_limited_and_restored(monkeypatch):
    monkeypatch.setenv("BUDGETED_LEDGER", "off")
    monkeypatch.setenv("BUDGETED_JOBSERVER", "0")
    np.ones(2) @ np.ones(2)
    before = _blas_threads()
    with budgeted.hold_cpus(1, n_cpus=2) as held:
        assert held == 1 and _blas_threads() == {1}
        assert budgeted.current_budget() == 1
    assert _blas_threads() == before
    with budgeted.hold_cpus(5, n_cpus=2) as held:  # never above the plan
        assert held == 2


def test_an_exception_gives_the_ledgers_tokens_back(monkeypatch, tmp_path):
    ledger = tmp_path / "ledger"
    ledger.mkdir(mode=0o700)
    monkeypatch.setenv("BUDGETED_LEDGER", str(ledger))
    monkeypatch.setenv("BUDGETED_JOBSERVER", "0")
    with pytest.raises(KeyError), budgeted.hold_cpus(n_cpus=2) as held:
        assert held == 2
        raise KeyError("inside")
    with budgeted.hold_cpus(n_cpus=2) as held:  # both came back
        assert held == 2


def _held_in_a_task():
    with budgeted.hold_cpus() as all_of_it:
        with budgeted.hold_cpus(1) as one:
            inner = budgeted.current_budget()
        outer = budgeted.current_budget()
    return os.getpid(), all_of_it, one, inner, outer


def test_inside_a_task_the_block_stays_within_the_tasks_budget(monkeypatch):
    monkeypatch.setenv("BUDGETED_LEDGER", "off")
    with parallel_config("budgeted", n_jobs=2, n_cpus=4, dynamic=False):
        seen = Parallel()(delayed(_held_in_a_task)() for _ in range(2))
    assert {tuple(budgets) for _, *budgets in seen} == {(2, 1, 1, 2)}
    assert os.getpid() not in {pid for pid, *_ in seen}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_threads": 0}, "n_threads"),
        ({"n_threads": 1.5}, "n_threads"),
        ({"n_cpus": 0}, "n_cpus"),
    ],
)
def test_bad_input_is_named(kwargs, words):
    with pytest.raises(ValueError, match=words), budgeted.hold_cpus(**kwargs):
        pass


def test_a_waiting_block_sleeps(tmp_path, monkeypatch):
    """Blocked behind another holder, the block's wait burns no CPU."""
    ledger = tmp_path / "ledger"
    ledger.mkdir(mode=0o700)
    monkeypatch.setenv("BUDGETED_LEDGER", str(ledger))
    monkeypatch.setenv("BUDGETED_JOBSERVER", "0")
    program = tmp_path / "program.py"
    program.write_text(_PROGRAM)
    env = clean_env(BUDGETED_LEDGER=str(ledger))
    holder = subprocess.Popen(
        [PYTHON, str(program), "1.0", "no"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        json.loads(holder.stdout.readline())  # it holds both tokens
        cpu, wall = time.process_time(), time.monotonic()
        with budgeted.hold_cpus(n_cpus=2) as held:
            waited = time.monotonic() - wall
            burned = time.process_time() - cpu
        assert held >= 1 and waited > 0.3
        assert burned < 0.1 * waited
    finally:
        holder.kill()
        holder.wait()
