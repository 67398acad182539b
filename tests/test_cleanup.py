"""Nothing is left behind, whatever ends a call: each case in a real subprocess.

Every script memory-maps its arrays (``max_nbytes="1K"``) into a private
``JOBLIB_TEMP_FOLDER``; boards and loky semaphores go to ``/dev/shm``. After
the script exits we list both: no entry named after the script or its
workers may remain, no worker may survive, and loky's resource tracker must
have printed nothing.
"""

from __future__ import annotations

import os
import signal

import pytest

from _subproc import SHM, Script, entries_of, tracker_noise

CALL = """
A = np.ones(1000)
with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K"):
    {call}
"""


def script(tmp_path, body):
    memmaps = tmp_path / "memmaps"
    memmaps.mkdir(exist_ok=True)
    return Script(body, tmp_path / "run", env={"JOBLIB_TEMP_FOLDER": str(memmaps)})


def assert_nothing_left(run: Script, memmaps, stderr: str) -> None:
    pids = [run.pid, *(c.pid for c in run.children)]
    assert run.children_left() == []
    assert os.listdir(memmaps) == []
    assert entries_of(pids, SHM) == []
    assert tracker_noise(stderr) == []


def test_normal_return_and_task_exception_leave_nothing(tmp_path):
    run = script(
        tmp_path,
        """
        arrays = [np.full(1000, i, dtype=float) for i in range(4)]
        with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K"):
            results = Parallel()(delayed(total)(a, i) for i, a in enumerate(arrays))
            print("results", results)
            print("after call", os.listdir(os.environ["JOBLIB_TEMP_FOLDER"]))
            try:
                Parallel()(delayed(fail)(a, i) for i, a in enumerate(arrays))
            except ValueError as exc:
                print("raised", type(exc).__name__, exc)
                print("".join(traceback.format_exception(exc)))
            print("after error", os.listdir(os.environ["JOBLIB_TEMP_FOLDER"]))
            print("boards", [e for e in own_entries("/dev/shm") if "board" in e])
        """,
    )
    run.start()
    rc, out, err = run.finish()
    assert rc == 0, out + err
    assert "results [0.0, 1001.0, 2002.0, 3003.0]" in out
    # each call's memmap folder is gone as soon as the call returns
    assert "after call []" in out and "after error []" in out
    assert "boards []" in out
    # the task's own exception, with the worker's traceback
    assert "raised ValueError task 1 failed on purpose" in out
    assert ", in fail\nValueError: task 1 failed on purpose" in out  # worker's frame
    assert_nothing_left(run, tmp_path / "memmaps", err)


def test_worker_killed_names_the_task_and_next_call_works(tmp_path):
    run = script(
        tmp_path,
        """
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        a = np.ones(1000)
        with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K"):
            try:
                Parallel()(delayed(hold)(a, i) for i in range(4))
            except TerminatedWorkerError as exc:
                print("lost:", exc)
            print("next", Parallel()(delayed(total)(a, i) for i in range(3)))
        """,
    )
    run.start()
    worker = run.wait_started()
    run.send(signal.SIGKILL, worker)
    rc, out, err = run.finish()
    assert rc == 0, out + err
    assert "lost: A worker process managed by the executor was unexpectedly" in out
    assert "A batch this call lost: " in out  # ours, after loky's words
    assert "hold(array(" in out  # the task is named
    assert "next [1000.0, 1001.0, 1002.0]" in out
    assert_nothing_left(run, tmp_path / "memmaps", err)


@pytest.mark.parametrize(
    "sig, returncode, text",
    [(signal.SIGINT, -signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, 143, "")],
)
def test_parent_interrupted_or_terminated_leaves_nothing(
    tmp_path, sig, returncode, text
):
    run = script(
        tmp_path,
        """
        import signal
        before = signal.getsignal(signal.SIGTERM)
        a = np.ones(1000)
        try:
            with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K"):
                Parallel()(delayed(hold)(a, i) for i in range(4))
        finally:
            print("handler restored", signal.getsignal(signal.SIGTERM) is before)
        """,
    )
    run.start()
    run.wait_started()
    assert os.listdir(tmp_path / "memmaps")  # the array is memory-mapped there
    run.send(sig)
    rc, out, err = run.finish()
    assert rc == returncode, out + err
    assert text in err
    assert "handler restored True" in out
    assert_nothing_left(run, tmp_path / "memmaps", err)


VICTIM = """
a = np.ones(1000)
with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K"):
    Parallel()(delayed(hold)(a, i) for i in range(4))
"""


def is_tracker(proc) -> bool:
    return "resource_tracker" in " ".join(proc.cmdline())


def test_a_killed_parents_workers_exit_and_its_tracker_cleans_up(tmp_path):
    memmaps = tmp_path / "memmaps"
    victim = script(tmp_path, VICTIM)
    victim.start()
    try:
        victim.wait_started()
        assert any(is_tracker(c) for c in victim.children)
        victim.send(signal.SIGKILL)
        victim.proc.wait(30)
        # the workers exit by themselves (budgeted.lifeline); the trackers
        # then see the end of their pipe, unlink what was registered, exit
        assert victim.children_left(timeout=10) == []
        # all but the slot table (not tracked: the next start removes it)
        left = entries_of([victim.pid], memmaps) + entries_of([victim.pid], SHM)
        assert [e for e in left if not e.startswith("budgeted-board-")] == []
    finally:
        victim.kill_all()


def test_leftovers_of_a_killed_program_are_removed_at_next_start(tmp_path):
    memmaps = tmp_path / "memmaps"
    victim = script(tmp_path, VICTIM)
    # a live process's folder (ours) must never be touched
    live = memmaps / f"joblib_memmapping_folder_{os.getpid()}_live_folder"
    live.mkdir()
    victim.start()
    try:
        victim.wait_started()
        # the whole program at once, trackers first: nothing cleans up
        for tracker in filter(is_tracker, victim.children):
            victim.send(signal.SIGKILL, tracker.pid)
        victim.send(signal.SIGKILL)
        victim.proc.wait(30)
        assert victim.children_left(timeout=10) == []  # the workers follow
        left = entries_of([victim.pid], memmaps) + entries_of([victim.pid], SHM)
        assert any(e.startswith("joblib_memmapping_folder_") for e in left)
        assert any(e.startswith("budgeted-board-") for e in left)
        assert any(e.startswith("sem.loky-") for e in left)
        # the next start (another process, same folders) removes them
        nxt = Script(
            CALL.format(call="print(Parallel()(delayed(total)(a, 1) for a in [A, A]))"),
            tmp_path / "next",
            env={"JOBLIB_TEMP_FOLDER": str(memmaps)},
        )
        rc, out, err = nxt.run()
        assert rc == 0, out + err
        assert entries_of([victim.pid], memmaps) == []
        assert entries_of([victim.pid], SHM) == []
        assert live.is_dir()
        assert tracker_noise(err) == []
    finally:
        victim.kill_all()  # only if a check failed: its processes are ours


def test_import_installs_no_signal_handler(tmp_path):
    run = Script(
        """
        import signal
        print("after import", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        """,
        tmp_path,
    )
    rc, out, err = run.run()
    assert rc == 0, out + err
    assert "after import True" in out
