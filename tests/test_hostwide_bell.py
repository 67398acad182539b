"""A ledger waiter sleeps until a token may be free: real processes, real inotify.

The waiters here are told to look by themselves only every 30 s
(``bell.POLL``), so a waiter that has its token within seconds was woken by
an event: a release, or the exit of a killed holder.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from _hostwide import PYTHON, TIMEOUT, start_waiter, tickets
from budgeted.hostwide import bell
from budgeted.hostwide.ledger import HostLedger

#: Far below the waiters' own 30 s between looks, far above a loaded wake-up.
WOKEN_WITHIN = 10.0

_SLOW_WAITER = textwrap.dedent(
    """
    import json, sys, threading, time
    from budgeted.hostwide import bell
    bell.POLL = (30.0, 30.0)  # without an event, the next look is in 30 s
    from budgeted.hostwide.ledger import HostLedger
    ledger = HostLedger(int(sys.argv[2]), folder=sys.argv[1])
    printing = threading.Lock()  # one line per thread, never two mixed
    def wait():
        got = ledger.acquire(1, block=True, timeout=60)
        with printing:
            print(json.dumps({"got": got, "at": time.monotonic()}), flush=True)
    threads = [threading.Thread(target=wait) for _ in range(int(sys.argv[3]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    """
)


@pytest.fixture
def ledger_dir(tmp_path) -> Path:
    folder = tmp_path / "ledger"
    folder.mkdir(mode=0o700)
    return folder


def _slow_waiter(ledger_dir: Path, n_tokens: int, threads: int = 1):
    """A program whose ``threads`` wait for a token of the ledger, asleep
    (every ticket in the folder, then a moment to fall asleep)."""
    proc = start_waiter(
        [PYTHON, "-c", _SLOW_WAITER, str(ledger_dir), str(n_tokens), str(threads)],
        ledger_dir,
    )
    deadline = time.monotonic() + TIMEOUT
    while len(tickets(ledger_dir)) < threads:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    return proc


def _reports(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


def _assert_woken(waiter: subprocess.Popen, since: float, threads: int = 1) -> None:
    """Each of the ``threads`` of a :func:`_slow_waiter` got its token, all
    within :data:`WOKEN_WITHIN` s of ``since`` (long before their own look)."""
    reports = _reports(waiter)
    assert [r["got"] for r in reports] == [1] * threads
    assert max(r["at"] for r in reports) - since < WOKEN_WITHIN


def _waiting_thread(ledger: HostLedger) -> tuple[threading.Thread, list[int]]:
    """A thread of this process waiting for a token of ``ledger`` (for 60 s
    at most), and the list its result goes to."""
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(ledger.acquire(1, True, 60)))
    thread.start()
    time.sleep(0.1)
    return thread, got


def _ended(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_release_wakes_the_waiting_program(ledger_dir):
    ledger = HostLedger(1, folder=ledger_dir)
    assert ledger.acquire(1) == 1
    waiter = _slow_waiter(ledger_dir, 1)
    try:
        released = time.monotonic()
        ledger.release()
        _assert_woken(waiter, released)
    finally:
        _ended(waiter)
        ledger.close()


def test_one_release_wakes_every_waiting_thread_of_a_program(ledger_dir):
    ledger = HostLedger(2, folder=ledger_dir)
    assert ledger.acquire(2) == 2
    waiter = _slow_waiter(ledger_dir, 2, threads=2)
    try:
        released = time.monotonic()
        ledger.release()  # both tokens, one ring: one thread reads it for both
        _assert_woken(waiter, released, threads=2)
    finally:
        _ended(waiter)
        ledger.close()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from budgeted.hostwide.ledger import HostLedger
    print(HostLedger(1, folder=sys.argv[1]).acquire(1), flush=True)
    time.sleep(120)
    """
)


def test_a_killed_holder_wakes_the_waiting_program(ledger_dir):
    """The kernel drops a killed holder's lock and closes its token file:
    the close wakes the waiter (no release rang)."""
    holder = subprocess.Popen(
        [PYTHON, "-c", _HOLDER, str(ledger_dir)], stdout=subprocess.PIPE, text=True
    )
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "1"
        waiter = _slow_waiter(ledger_dir, 1)
        killed = time.monotonic()
        holder.kill()
        _assert_woken(waiter, killed)
    finally:
        _ended(holder, *([waiter] if waiter else []))


_WAITER = textwrap.dedent(
    """
    import sys
    from budgeted.hostwide.ledger import HostLedger
    print(HostLedger(1, folder=sys.argv[1]).acquire(1, block=True, timeout=60))
    """
)


def _voluntary_switches(pid: int) -> int:
    """How often ``pid``'s main thread went to sleep (from the kernel)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no context switch count for {pid}")


def test_a_waiting_program_sleeps_while_nothing_happens(ledger_dir):
    """Polling every 10 ms, it woke 200 times in 2 s; on the bell, every 50 ms
    at most once nothing happened."""
    ledger = HostLedger(1, folder=ledger_dir)
    assert ledger.acquire(1) == 1
    waiter = start_waiter([PYTHON, "-c", _WAITER, str(ledger_dir)], ledger_dir)
    try:
        time.sleep(0.3)  # its first short sleeps are over
        before = _voluntary_switches(waiter.pid)
        time.sleep(2.0)
        woke = _voluntary_switches(waiter.pid) - before
        assert 0 < woke < 100
        ledger.release()
        out, _ = waiter.communicate(timeout=TIMEOUT)
        assert out.split() == ["1"]
    finally:
        _ended(waiter)
        ledger.close()


def test_without_inotify_a_waiter_polls(ledger_dir, monkeypatch):
    monkeypatch.setattr(bell, "_libc", lambda: None)
    holder, waiter = HostLedger(1, ledger_dir), HostLedger(1, ledger_dir)
    assert holder.acquire(1) == 1
    thread, got = _waiting_thread(waiter)
    assert waiter._bell._listening() is False
    holder.release()
    thread.join(TIMEOUT)
    assert got == [1]
    holder.close()
    waiter.close()


def test_the_bell_can_be_rung_by_whoever_may_use_the_tokens(tmp_path, ledger_dir):
    private = bell.Bell(ledger_dir, 0o600, 0)  # the default ledger's modes
    private.ring()
    assert stat.S_IMODE(os.stat(ledger_dir / bell.BELL_NAME).st_mode) == 0o600
    private.close()
    team = tmp_path / "team"
    team.mkdir()
    os.chmod(team, 0o2770)  # group-writable with setgid: a team's ledger
    shared = HostLedger(1, folder=team)
    assert shared.acquire(1) == 1 and shared.release() == 1  # rings
    assert stat.S_IMODE(os.stat(team / bell.BELL_NAME).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(team / "token-0").st_mode) == 0o640
    shared.close()


def test_a_fifo_put_in_place_of_the_bell_holds_no_one(ledger_dir):
    os.mkfifo(ledger_dir / bell.BELL_NAME)
    holder, waiter = HostLedger(1, ledger_dir), HostLedger(1, ledger_dir)
    assert holder.acquire(1) == 1
    thread, got = _waiting_thread(waiter)
    holder.release()  # opening a fifo to write would block without a reader
    thread.join(TIMEOUT)
    assert got == [1]
    assert stat.S_ISFIFO(os.stat(ledger_dir / bell.BELL_NAME).st_mode)
    holder.close()
    waiter.close()
