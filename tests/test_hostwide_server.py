"""``python -m budgeted run``: a fifo jobserver, with budgeted programs and ninja.

Every command runs for real with ``TMPDIR`` pointing into the test's folder,
so the tests can see that the jobserver's folder is gone afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from _hostwide import (
    BUDGETED_RUN,
    NINJA,
    PYTHON,
    TIMEOUT,
    clean_env,
    program,
    run,
)
from _token_program import max_together, read_logs
from budgeted.hostwide.server import exit_code, makeflags_for


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return clean_env(TMPDIR=str(tmp), BUDGETED_LEDGER="off", **extra)


def _left_behind(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tmp").iterdir())


def test_makeflags_for_keeps_words_and_variables_last():
    assert makeflags_for("", 3, "/f") == "-j3 --jobserver-auth=fifo:/f"
    assert (
        makeflags_for("k -j8 --jobserver-auth=3,4 -- CC=gcc", 2, "/f")
        == "k -j8 --jobserver-auth=3,4 -j2 --jobserver-auth=fifo:/f -- CC=gcc"
    )


def test_exit_code_follows_the_shell():
    assert [exit_code(0), exit_code(7), exit_code(-15), exit_code(-9)] == [
        0,
        7,
        143,
        137,
    ]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["sh", "-c", "exit 7"], 7),
        (["sh", "-c", "kill -TERM $$"], 143),
        (["no-such-command-budgeted"], 127),
    ],
)
def test_exit_code_is_the_commands_and_nothing_is_left(tmp_path, command, expected):
    done = run([*BUDGETED_RUN, "-j", "2", "--", *command], _env(tmp_path))
    assert done.returncode == expected, done.stderr
    assert _left_behind(tmp_path) == []


def test_command_sees_the_fifo_in_makeflags(tmp_path):
    script = "import os; print(os.environ['MAKEFLAGS'])"
    env = _env(tmp_path, MAKEFLAGS="k -- CC=gcc")
    done = run([*BUDGETED_RUN, "-j3", "--", PYTHON, "-c", script], env)
    words = done.stdout.split()
    assert words[:2] == ["k", "-j3"] and words[-2:] == ["--", "CC=gcc"]
    fifo = Path(words[2].removeprefix("--jobserver-auth=fifo:"))
    assert fifo.parent.parent == tmp_path / "tmp"
    assert not fifo.parent.exists()


@pytest.mark.parametrize(
    ("jobs", "message"),
    [("0", "-j must be a positive integer"), ("5000", "between 1 and 4096")],
)
def test_bad_j_is_refused(tmp_path, jobs, message):
    done = run([*BUDGETED_RUN, "-j", jobs, "--", "true"], _env(tmp_path))
    assert done.returncode == 2 and message in done.stderr


_DESCRIBE = (
    "from budgeted import hostwide; "
    "print(hostwide.tokens_for_this_process().describe())"
)


def test_program_tasks_never_exceed_j_and_all_tokens_come_back(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    tasks = program(log, "p", threads=5, tasks=15, seconds=0.03)
    command = f'{tasks} && {PYTHON} -c "{_DESCRIBE}"'
    done = run([*BUDGETED_RUN, "-j", "3", "--", "sh", "-c", command], _env(tmp_path))
    assert done.returncode == 0, done.stderr
    records = read_logs(log)
    assert len(records) == 15
    assert max_together(records) <= 3
    assert any(r["token"] == "extra" for r in records)
    report = eval(done.stdout)  # noqa: S307 (our own dict repr)
    assert (report["style"], report["jobs"], report["free"]) == ("fifo", 3, 2)
    assert _left_behind(tmp_path) == []


def _ninja_file(folder: Path, log: Path) -> None:
    """Four one-CPU jobs and one budgeted program with three threads."""
    lines = [
        "rule job",
        "  command = $cmd && touch $out",
        "",
    ]
    for i in range(4):
        lines += [f"build out{i}: job", f"  cmd = {program(log, f'job{i}', 1, 1, 0.2)}"]
    lines += ["build outp: job", f"  cmd = {program(log, 'prog', 3, 9, 0.05)}"]
    (folder / "build.ninja").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("jobs", [1, 3])
def test_ninja_and_a_budgeted_program_share_the_jobserver(tmp_path, jobs):
    """Ninja 1.13's jobs and the program's tasks (a job itself) never exceed
    -j together. Without the jobserver ninja alone would run 4 at once."""
    log = tmp_path / "log"
    log.mkdir()
    _ninja_file(tmp_path, log)
    cmd = [*BUDGETED_RUN, "-j", str(jobs), "--", NINJA, "-C", str(tmp_path)]
    done = run(cmd, _env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    records = read_logs(log)
    assert len(records) == 4 + 9
    assert max_together(records) <= jobs
    assert _left_behind(tmp_path) == []


_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from budgeted import hostwide
    source = hostwide.tokens_for_this_process()
    got = source.acquire(2)
    tmp = sys.argv[1] + ".tmp"
    open(tmp, "w").write(str(got))
    os.replace(tmp, sys.argv[1])
    time.sleep(120)
    """
)

_DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from budgeted import hostwide
    holder, marker = sys.argv[1], Path(sys.argv[2])
    child = subprocess.Popen([sys.executable, holder, str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    source = hostwide.tokens_for_this_process()
    before = source.acquire(2)
    child.kill()
    child.wait()
    after = source.acquire(2, block=True, timeout=60)
    print(marker.read_text(), before, after, source.describe()["free"])
    source.release()
    """
)


def test_tokens_of_a_sigkilled_client_are_written_back(tmp_path):
    """A budgeted client killed with SIGKILL while holding 2 of 2 tokens: the
    server writes them back while the command still runs."""
    (tmp_path / "holder.py").write_text(_HOLDER)
    (tmp_path / "driver.py").write_text(_DRIVER)
    marker = tmp_path / "held"
    cmd = [
        PYTHON,
        str(tmp_path / "driver.py"),
        str(tmp_path / "holder.py"),
        str(marker),
    ]
    done = run([*BUDGETED_RUN, "-j", "3", "--", *cmd], _env(tmp_path))
    assert done.returncode == 0, done.stderr
    held, before, after, free = done.stdout.split()
    assert (held, before, after, free) == ("2", "0", "2", "0")
    assert _left_behind(tmp_path) == []


_WAITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    tmp = Path(sys.argv[1] + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, sys.argv[1])
    time.sleep(120)
    """
)


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None, "exited early"
        assert time.monotonic() < deadline, f"no {marker.name} after {TIMEOUT} s"
        time.sleep(0.02)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_are_forwarded_and_the_folder_removed(tmp_path, sig, code):
    (tmp_path / "waiter.py").write_text(_WAITER)
    marker = tmp_path / "started"
    server = subprocess.Popen(
        [
            *BUDGETED_RUN,
            "-j",
            "2",
            "--",
            PYTHON,
            str(tmp_path / "waiter.py"),
            str(marker),
        ],
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(marker, server)
        child = int(marker.read_text())
        server.send_signal(sig)
        assert server.wait(timeout=TIMEOUT) == code
        assert (
            not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
        )
        assert _left_behind(tmp_path) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_refill_from_dead_writes_back_only_what_the_dead_held(tmp_path):
    import os

    from budgeted.hostwide import holdings, jobserver

    alive = holdings.HoldingsRecord(tmp_path)  # locked while it is open
    alive.write(2)
    (tmp_path / "4242-dead").write_bytes(b"%8d" % 3)  # nobody holds its lock
    read_fd, write_fd = os.pipe()
    try:
        assert jobserver.refill_from_dead(tmp_path, write_fd) == 3
        assert os.read(read_fd, 16) == b"+++"
        assert sorted(p.name for p in tmp_path.iterdir()) == [alive.path.name]
    finally:
        alive.close()
        os.close(read_fd)
        os.close(write_fd)
    assert list(tmp_path.iterdir()) == []
    for name in ("HOLDERS_DIR", "IMPLICIT_LOCK", "SERVER_PREFIX", "refill_from_dead"):
        assert getattr(jobserver, name) is getattr(holdings, name)
