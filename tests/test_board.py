"""The slot board: claims, dead owners, and stale files."""

import subprocess
import sys
import time

import psutil

from budgeted.board import Board, remove_stale_boards
from budgeted.leftovers import pid_alive


def exited_child():
    """A child that has exited but is not reaped yet (a zombie)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return child


def test_a_zombie_counts_as_dead():
    child = exited_child()
    try:
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(psutil.Process().pid)


def test_a_dead_owners_slot_is_claimed_again(tmp_path):
    board = Board.create_file(2, directory=tmp_path)
    try:
        child = exited_child()
        assert board.claim(child.pid) == 0
        assert board.claim(psutil.Process().pid) == 1
        # every slot is taken: the replacement of the dead owner gets slot 0
        assert board.claim(12345678, alive=pid_alive) == 0
        child.wait()
    finally:
        board.close(unlink=True)
    assert list(tmp_path.iterdir()) == []


def test_stale_boards_of_dead_creators_only_are_removed(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f"budgeted-board-{child.pid}-00"
    live = tmp_path / f"budgeted-board-{psutil.Process().pid}-00"
    stale.touch()
    live.touch()
    assert remove_stale_boards(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == [live]


def test_the_cpus_a_programs_batches_hold_and_its_waiters(tmp_path):
    """What the queue of waiters reads: the sum over slots, the waiters; a
    dead owner's CPUs and wait are forgotten when its slot is claimed again."""
    board = Board.create_file(3, directory=tmp_path)
    try:
        child = exited_child()
        mine = psutil.Process().pid
        assert (board.claim(child.pid), board.claim(mine)) == (0, 1)
        board.set_held(0, 2)
        board.set_held(1, 1)
        assert board.held() == 3
        board.release(1, mine)
        assert board.held() == 2
        board.add_waiting(0, +1)  # the child waits for a token
        assert board.claim(mine) == 1
        board.add_waiting(1, +2)
        board.add_waiting(1, -1)
        assert board.waiting == 2
        assert board.claim(4242, alive=pid_alive) == 2  # a free slot first
        assert board.claim(4343, alive=pid_alive) == 0  # then the dead owner's
        assert board.held() == 0
        assert board.waiting == 1  # the dead owner no longer waits
        child.wait()
    finally:
        board.close(unlink=True)
