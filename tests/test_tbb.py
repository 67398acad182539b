"""What oneTBB really does in budgeted's workers with the IPC switches it sets.

oneTBB's IPC server (``libirml.so.1``, from the ``tbb4py`` wheel) starts only
when ``IPC_ENABLE`` is set and not ``0``/``false``; it then opens the named
semaphores through which TBB schedulers of one process group share the CPUs
(``/dev/shm/sem.__IPC_active_<pgrp>_<start>``). Releases of tbb4py after
2022.0.0 ship a libirml.so.1 that exports no symbol, so TBB cannot load it.
joblib's ``ENABLE_IPC`` is read by nothing in oneTBB.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# The check runs in a program of its own, started as the leader of a new
# process group: TBB names its IPC semaphore after the group leader's start
# time, which the suite's own group (a shell's background job) may not have.
_CHECK = textwrap.dedent(
    """
    import contextlib, json, os
    import numba
    import tbb  # tbb4py: its libirml.so.1 is TBB's IPC server
    from joblib import Parallel, delayed, parallel_config
    import budgeted  # registers the backend


    def _ipc_semaphore():
        # the semaphore TBB's IPC server opens (get_shared_name in libirml)
        pgrp = os.getpgrp()
        with open(f"/proc/{pgrp}/stat") as stat:
            start = stat.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
        return f"/dev/shm/sem.__IPC_active_{pgrp}_{start}"


    def _tbb_work_in_worker(_):
        # run numba's TBB threading layer; has TBB opened its IPC semaphore?
        import ctypes
        import importlib.metadata

        # numba's tbbpool finds libtbb by soname only: a venv's lib/ is not searched
        files = importlib.metadata.files("tbb")
        (lib,) = [f for f in files if f.name == "libtbb.so.12"]
        ctypes.CDLL(str(lib.locate()))
        numba.config.THREADING_LAYER = "tbb"

        @numba.njit(parallel=True)
        def total(n):
            s = 0.0
            for i in numba.prange(n):
                s += i
            return s

        assert total(10_000) == 49_995_000.0
        assert numba.threading_layer() == "tbb"
        ipc = os.path.exists(_ipc_semaphore())
        return os.environ.get("ENABLE_IPC"), os.environ.get("IPC_ENABLE"), ipc


    # TBB never unlinks its semaphores (only `python -m tbb --ipc` does)
    sems = [_ipc_semaphore(), _ipc_semaphore().replace("_active_", "_stop_")]
    for path in sems:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    try:
        with parallel_config("budgeted", n_jobs=2, n_cpus=2):
            seen = Parallel()(delayed(_tbb_work_in_worker)(i) for i in range(2))
    finally:
        for path in sems:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    print(json.dumps(seen))
    """
)


def _run_two_workers(**environ: str | None) -> list[tuple]:
    """What two budgeted workers saw: (ENABLE_IPC, IPC_ENABLE, semaphore open)."""
    env = dict(os.environ)
    for name, value in environ.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    done = subprocess.run(
        [sys.executable, "-c", _CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr
    return [tuple(seen) for seen in json.loads(done.stdout.splitlines()[-1])]


@pytest.mark.slow
def test_budgeted_leaves_tbbs_ipc_server_off():
    """joblib's ENABLE_IPC=1 is set, as joblib does; TBB ignores it."""
    seen = _run_two_workers(ENABLE_IPC=None, IPC_ENABLE=None)
    assert seen == [("1", None, False)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("value, ipc", [("1", True), ("0", False)])
def test_a_users_ipc_enable_reaches_tbb_in_the_workers(value, ipc):
    seen = _run_two_workers(ENABLE_IPC=None, IPC_ENABLE=value)
    assert seen == [("1", value, ipc)] * 2
