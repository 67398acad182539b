"""The host ledger (locked token files) and how a process chooses its source.

Holders are real processes; the kernel's flock is what is tested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from _hostwide import PYTHON, TIMEOUT, clean_env, program, start_waiter, tickets
from _token_program import max_together, read_logs
from budgeted import hostwide
from budgeted.hostwide.ledger import HostLedger, LedgerUnusable, check_ledger_folder
from budgeted.hostwide.queue import WaitQueue


@pytest.fixture
def ledger_dir(tmp_path) -> Path:
    folder = tmp_path / "ledger"
    folder.mkdir(mode=0o700)
    return folder


def test_two_programs_share_the_ledger(tmp_path, ledger_dir):
    """Planning for 4 CPUs each: 4 tokens in all, every CPU one of them."""
    log = tmp_path / "log"
    log.mkdir()
    env = clean_env(BUDGETED_LEDGER=str(ledger_dir), BUDGETED_TEST_N_CPUS="4")
    procs = [
        subprocess.Popen(program(log, name, 4, 12, 0.03).split(), env=env)
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=TIMEOUT) for p in procs] == [0, 0]
    records = read_logs(log)
    assert len(records) == 24
    assert max_together(records) <= 4
    assert {r["token"] for r in records} == {"extra"}  # no implicit token


_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from budgeted.hostwide.ledger import HostLedger
    ledger = HostLedger(3, folder=sys.argv[1])
    got = ledger.acquire(3)
    tmp = sys.argv[2] + ".tmp"
    open(tmp, "w").write(str(got))
    os.replace(tmp, sys.argv[2])
    time.sleep(120)
    """
)


def _start_holder(tmp_path: Path, ledger_dir: Path) -> subprocess.Popen:
    script, marker = tmp_path / "holder.py", tmp_path / "held"
    script.write_text(_HOLDER)
    proc = subprocess.Popen([PYTHON, str(script), str(ledger_dir), str(marker)])
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    assert marker.read_text() == "3"
    return proc


def test_sigkilled_holder_gives_its_tokens_back_at_once(tmp_path, ledger_dir):
    holder = _start_holder(tmp_path, ledger_dir)
    ledger = HostLedger(3, folder=ledger_dir)
    try:
        assert ledger.acquire(3) == 0
        report = ledger.describe()
        assert report["holders"] == {holder.pid: 3} and report["in_use"] == 3
        holder.kill()
        holder.wait(timeout=TIMEOUT)
        assert ledger.acquire(3) == 3  # without waiting: the kernel freed them
        assert ledger.describe()["holders"] == {os.getpid(): 3}
    finally:
        ledger.close()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert ledger.held == 0


def test_a_waiter_wakes_when_a_holder_dies(tmp_path, ledger_dir):
    holder = _start_holder(tmp_path, ledger_dir)
    waiter = subprocess.Popen(
        [PYTHON, "-c", _WAIT, str(ledger_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        ledger = HostLedger(3, folder=ledger_dir)
        # no token is free until the holder dies (the waiter may be asleep)
        assert ledger.acquire(1) == 0
        holder.kill()
        out, _ = waiter.communicate(timeout=TIMEOUT)
        assert out.split()[0] == "1"
    finally:
        for proc in (holder, waiter):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


_WAIT = (
    "import sys; from budgeted.hostwide.ledger import HostLedger; "
    "print(HostLedger(3, folder=sys.argv[1]).acquire(1, block=True, timeout=60))"
)


def test_threads_of_one_process_never_share_a_token(ledger_dir):
    ledger = HostLedger(2, folder=ledger_dir)
    assert ledger.acquire(5) == 2 and ledger.acquire(1) == 0
    assert ledger.release(1) == 1 and ledger.acquire(2) == 1
    with ledger.hold(1) as got:
        assert got == 0
    assert ledger.release() == 2 and ledger.held == 0
    with pytest.raises(ValueError, match="want must be >= 0"):
        ledger.acquire(-1)
    ledger.close()


def test_block_with_timeout_returns_zero_without_spinning(ledger_dir):
    holder, waiter = HostLedger(1, ledger_dir), HostLedger(1, ledger_dir)
    assert holder.acquire(1) == 1  # another open file description: a rival
    cpu, start = time.process_time(), time.monotonic()
    assert waiter.acquire(1, block=True, timeout=0.5) == 0
    assert time.monotonic() - start >= 0.5
    assert time.process_time() - cpu < 0.25  # slept, did not spin
    holder.close()
    assert waiter.acquire(1, block=True) == 1
    waiter.close()


def test_one_cpu_means_no_token_and_no_wait(ledger_dir):
    assert HostLedger(0, folder=ledger_dir).acquire(1, block=True) == 0


@pytest.mark.parametrize(
    ("mode", "private", "problem"),
    [
        (0o755, True, "is not private"),
        (0o777, False, "world-writable without the sticky bit"),
        (0o770, False, "group-writable without the setgid or sticky bit"),
    ],
)
def test_unsafe_folders_are_refused(tmp_path, mode, private, problem):
    folder = tmp_path / "f"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(LedgerUnusable, match=problem):
        check_ledger_folder(folder, private)


@pytest.mark.parametrize("mode", [0o1777, 0o2770, 0o700])
def test_shared_folders_that_are_safe_are_accepted(tmp_path, mode):
    folder = tmp_path / "f"
    folder.mkdir()
    folder.chmod(mode)
    check_ledger_folder(folder, private=False)
    ledger = HostLedger(1, folder=folder)
    assert ledger.acquire(1) == 1
    assert (folder / "token-0").stat().st_mode & 0o777 == 0o640
    ledger.close()


def test_a_symlink_or_file_is_not_a_ledger(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path)
    for name in ("file", "link"):
        with pytest.raises(LedgerUnusable, match="is not a directory"):
            check_ledger_folder(tmp_path / name, private=False)


def _choose(environ, n_cpus=4):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = hostwide.choose_source(environ, n_cpus=n_cpus)
    return source, [str(w.message) for w in caught if w.category is RuntimeWarning]


def test_the_default_ledger_is_private_per_user():
    source, caught = _choose({})
    assert caught == [] and source.kind == "ledger"
    folder = Path(source.describe()["path"])
    assert folder.name == f"budgeted-ledger-{os.getuid()}"
    assert (
        folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    )
    assert source.n_tokens == 4  # every CPU is a token: no implicit one
    source.close()


def test_opt_outs_and_a_bad_ledger_path(tmp_path, ledger_dir):
    assert _choose({"BUDGETED_LEDGER": "off"}) == (None, [])
    source, caught = _choose({"BUDGETED_LEDGER": str(ledger_dir)})
    assert caught == [] and Path(source.describe()["path"]) == ledger_dir
    source.close()
    source, caught = _choose({"BUDGETED_LEDGER": str(tmp_path / "missing")})
    assert source is None
    assert (
        len(caught) == 1 and "BUDGETED_LEDGER" in caught[0] and "missing" in caught[0]
    )


def test_the_jobserver_wins_unless_disabled(ledger_dir):
    read, write = os.pipe()
    try:
        env = {"MAKEFLAGS": f" -j2 --jobserver-auth={read},{write}"}
        env["BUDGETED_LEDGER"] = str(ledger_dir)
        source, caught = _choose(env)
        assert caught == [] and source.kind == "jobserver"
        assert source.describe()["style"] == "pipe"
        source.close()
        source, caught = _choose({**env, "BUDGETED_JOBSERVER": "0"})
        assert caught == [] and source.kind == "ledger"
        source.close()
    finally:
        os.close(read)
        os.close(write)


# -- the queue of waiters: first come, first served between programs ----------
_WAITER = textwrap.dedent(
    """
    import sys, time
    from budgeted.hostwide.ledger import HostLedger
    ledger = HostLedger(1, folder=sys.argv[1])
    print(ledger.acquire(1, block=True, timeout=60), flush=True)
    time.sleep(60)  # holds the token until killed
    """
)


def _start_waiter(ledger_dir: Path) -> subprocess.Popen:
    """A real program waiting for the ledger's one token (held by the test)."""
    return start_waiter([PYTHON, "-c", _WAITER, str(ledger_dir)], ledger_dir)


def test_a_waiting_program_goes_before_later_takers(ledger_dir):
    """A token given back goes to the program that waits, not to another
    program's take that comes later; the waiting program's own processes are
    not held back by it."""
    mine = HostLedger(1, folder=ledger_dir)
    assert mine.acquire(1) == 1
    waiter = _start_waiter(ledger_dir)
    try:
        (ticket,) = tickets(ledger_dir)
        assert ticket.name.split("-")[2] == str(waiter.pid)  # its program
        assert mine.queue.waiters() == {waiter.pid: 1}
        waiter.send_signal(signal.SIGSTOP)  # so it cannot take the token yet
        mine.release()
        os.utime(ticket)  # as fresh as if it had just looked
        later = HostLedger(1, folder=ledger_dir, program=os.getpid() + 10**6)
        assert later.acquire(1) == 0  # free, but the waiter is ahead
        same = HostLedger(1, folder=ledger_dir, program=waiter.pid)
        assert same.acquire(1) == 1  # its own program goes on
        waiter.send_signal(signal.SIGCONT)
        same.release()
        assert waiter.stdout.readline().strip() == "1"  # served
        assert tickets(ledger_dir) == []  # its ticket went with its wait
        assert later.acquire(1) == 0  # the waiter holds the token
        waiter.kill()
        assert later.acquire(1, block=True, timeout=TIMEOUT) == 1
        later.close()
        same.close()
    finally:
        waiter.kill()
        waiter.wait()
        mine.close()


def test_a_waiter_keeps_only_the_tokens_it_can_use(ledger_dir):
    """A program that sees 1 CPU (token 0) waits: another program, seeing 2,
    still takes token 1, which the waiter cannot use, but not token 0."""
    low, high = HostLedger(1, folder=ledger_dir), HostLedger(2, folder=ledger_dir)
    assert low.acquire(1) == 1 and high.acquire(1) == 1  # tokens 0 and 1
    waiter = _start_waiter(ledger_dir)  # HostLedger(1): token 0 only
    other = HostLedger(2, folder=ledger_dir, program=os.getpid() + 10**6)
    try:
        (ticket,) = tickets(ledger_dir)
        waiter.send_signal(signal.SIGSTOP)  # so it cannot take a token yet
        high.release()
        low.release()
        os.utime(ticket)  # as fresh as if it had just looked
        assert other.acquire(2) == 1  # token 1; token 0 is kept for the waiter
        assert other.holders() == {os.getpid(): 1}
        waiter.send_signal(signal.SIGCONT)
        assert waiter.stdout.readline().strip() == "1"  # served with token 0
    finally:
        waiter.kill()
        waiter.wait()
        for ledger in (low, high, other):
            ledger.close()


def test_a_stopped_waiter_holds_no_one_back(ledger_dir):
    """A program stopped (Ctrl-Z) while it waits keeps its ticket file, which
    no longer counts once it is not touched for FRESH seconds."""
    from budgeted.hostwide.queue import FRESH

    mine = HostLedger(1, folder=ledger_dir)
    assert mine.acquire(1) == 1
    waiter = _start_waiter(ledger_dir)
    try:
        waiter.send_signal(signal.SIGSTOP)
        mine.release()
        other = HostLedger(1, folder=ledger_dir, program=os.getpid() + 10**6)
        (ticket,) = tickets(ledger_dir)
        assert other.acquire(1, block=True, timeout=TIMEOUT) == 1
        age = time.time() - ticket.stat().st_mtime  # the stopped waiter's ticket
        assert FRESH <= age < FRESH + 5, age  # taken once the ticket went stale
        other.close()
    finally:
        waiter.kill()
        waiter.wait()
        mine.close()


def test_a_killed_waiters_ticket_is_removed(ledger_dir):
    """A waiter SIGKILLed leaves its ticket file, unlocked: once old, the next
    look at the queue removes it; a live waiter's old ticket (locked) stays."""
    from budgeted.hostwide.queue import STALE

    mine = HostLedger(1, folder=ledger_dir)
    assert mine.acquire(1) == 1
    dead, alive = _start_waiter(ledger_dir), None
    try:
        dead.kill()
        dead.wait()
        (left,) = tickets(ledger_dir)
        alive = _start_waiter(ledger_dir)
        alive.send_signal(signal.SIGSTOP)  # its ticket ages too, but is locked
        old = time.time() - STALE - 1
        for ticket in tickets(ledger_dir):
            os.utime(ticket, (old, old))
        mine.release()
        assert mine.acquire(1) == 1  # no fresh waiter: taken; the queue looked at
        (kept,) = tickets(ledger_dir)
        assert kept != left and kept.name.split("-")[2] == str(alive.pid)
    finally:
        for proc in (dead, alive):
            if proc is not None:
                proc.kill()
                proc.wait()
        mine.close()


def _ticket_of(folder: Path, program: int) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.split("-")[2] == str(program)]


def test_the_program_holding_the_fewest_cpus_goes_first(tmp_path):
    """A waiter's place is (CPUs its program holds, when it began to wait);
    what its program holds is its ticket's size."""
    folder = tmp_path / "queue"
    folder.mkdir(mode=0o700)
    queue = WaitQueue(folder, program=1, usable=2)
    other = folder / f"wait-{1:020d}-2-2-{os.getpid()}-1"  # waits long
    other.write_bytes(b"\0")  # its program holds 1
    with queue.counting(lambda: 0):
        assert queue.reserved() == 0  # holds fewer: not behind it
    with queue.counting(lambda: 1):
        assert queue.reserved() == 2  # as many: the one that waits goes first
    held = [0]
    with queue.counting(lambda: held[0]), queue.waiting():
        (mine,) = _ticket_of(folder, 1)
        assert mine.stat().st_size == 0
        assert queue.reserved() == 0
        held[0] = 2
        queue.touch()  # it holds more now: its ticket says so, it goes behind
        assert mine.stat().st_size == 2
        assert queue.reserved() == 2
        queue.tell_held(1)  # another batch of its program ended
        assert mine.stat().st_size == 1
    assert _ticket_of(folder, 1) == []
    assert queue.waiters() == {2: 1}


def test_a_batch_giving_a_token_back_keeps_its_programs_place(tmp_path, monkeypatch):
    """While another program waits, a batch that gives a token back leaves a
    ticket for its program's next batch: ahead of a waiter of a program
    holding more, for KEEP seconds only; one per thread, none when no one
    else waits, and none left at exit."""
    from budgeted.hostwide import queue

    keep = 0.3  # longer than the real 0.05 s: a loaded machine's pauses
    monkeypatch.setattr(queue, "KEEP", keep)
    folder = tmp_path / "queue"
    folder.mkdir(mode=0o700)
    mine = WaitQueue(folder, program=1, usable=2)
    other = WaitQueue(folder, program=2, usable=2)
    mine.keep_place(1)
    assert _ticket_of(folder, 1) == []  # no one else waits: nothing kept
    with other.counting(lambda: 3), other.waiting():
        assert mine.reserved() == 0  # the waiter holds more: not ahead of us
        time.sleep(queue.RECHECK)  # "no one else waits" is trusted that long
        mine.keep_place(1)
        mine.keep_place(1)  # the next batch end: its place replaces the first
        (kept,) = _ticket_of(folder, 1)
        assert kept.stat().st_size == 1  # what the program holds after
        assert other.reserved() == 2  # the token waits for our next batch
        time.sleep(keep + 0.01)
        assert other.reserved() == 0  # it did not come: the waiter's turn
        assert mine.waiters() == {2: 1}
        mine.keep_place(1)
        mine.drop_kept()  # the next batch has its CPU: the place goes
        assert _ticket_of(folder, 1) == []
        mine.keep_place(1)
        mine.forget_kept()  # at exit
        assert _ticket_of(folder, 1) == []
    with mine.counting(lambda: 0), mine.waiting():
        other.keep_place(3)  # a program holding more keeps nothing ahead
        assert mine.reserved() == 0
    other.forget_kept()
    assert list(folder.iterdir()) == []
