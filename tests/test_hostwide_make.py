"""budgeted programs as clients of GNU make 4.3's jobserver (pipe style), for real.

Each recipe is a ``+`` line (make passes its pipe only to those) running a
real Python program that takes tokens per task and logs when each task ran.
make checks at exit that every token came back ("INTERNAL: Exiting with N
jobserver tokens"), and so do the tests, from inside the jobserver.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from _hostwide import MAKE, PYTHON, clean_env, program, run
from _token_program import max_together, read_logs

pytestmark = pytest.mark.skipif(not Path(MAKE).exists(), reason="needs GNU make")


def _make(tmp_path: Path, rules: dict[str, list[str]], jobs: int = 3, **env):
    """Write a Makefile (target -> recipe lines) and run ``make -jN`` on it."""
    text = f"all: {' '.join(rules)}\n.PHONY: all {' '.join(rules)}\n"
    for target, lines in rules.items():
        text += f"{target}:\n" + "".join(f"\t{line}\n" for line in lines)
    (tmp_path / "Makefile").write_text(text)
    done = run(
        [MAKE, f"-j{jobs}", "-s"], clean_env(BUDGETED_LEDGER="off", **env), cwd=tmp_path
    )
    assert "jobserver" not in done.stderr, done.stderr  # make's own token check
    return done


@pytest.mark.parametrize("n_programs", [2, 4])
def test_programs_under_make_never_exceed_j(tmp_path, n_programs):
    log = tmp_path / "log"
    log.mkdir()
    rules = {
        f"p{i}": [f"+@{program(log, f'p{i}', threads=3, tasks=6, seconds=0.05)}"]
        for i in range(n_programs)
    }
    done = _make(tmp_path, rules, jobs=3)
    assert done.returncode == 0, done.stderr
    records = read_logs(log)
    assert len(records) == 6 * n_programs
    assert max_together(records) <= 3
    assert {r["pid"] for r in records}.__len__() == n_programs
    if n_programs == 2:  # one token sits in the pipe from the start
        assert any(r["token"] == "extra" for r in records)


def test_recipe_without_plus_warns_and_uses_local_budgets(tmp_path):
    """make 4.3 closes its pipe for a recipe that is not marked ``+``."""
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    done = _make(tmp_path, {"a": [f"@{PYTHON} {script}"]})
    report = json.loads(done.stdout)
    assert report["source"] is None
    assert any("MAKEFLAGS" in w and "closed" in w for w in report["warnings"])


def test_dry_run_uses_no_jobserver(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    (tmp_path / "Makefile").write_text(f"all:\n\t+@{PYTHON} {script}\n")
    done = run(
        [MAKE, "-n", "-j3", "-s"], clean_env(BUDGETED_LEDGER="off"), cwd=tmp_path
    )
    report = json.loads(done.stdout.splitlines()[-1])  # make -n echoes first
    assert report == {"source": None, "warnings": [], "makeflags": report["makeflags"]}
    assert report["makeflags"].startswith("n")


_PROBE = textwrap.dedent(
    """
    import json, os, warnings
    from budgeted import hostwide
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = hostwide.tokens_for_this_process()
    print(json.dumps({
        "source": None if source is None else source.describe(),
        "warnings": [str(w.message) for w in caught],
        "makeflags": os.environ.get("MAKEFLAGS", ""),
    }))
    """
)

_RELEASE = textwrap.dedent(
    """
    import os, signal, sys, time
    from budgeted import hostwide
    from budgeted.sigterm import SigtermGuard
    mode, marker = sys.argv[1], sys.argv[2]
    source = hostwide.tokens_for_this_process()
    assert source.kind == "jobserver", source

    def misbehave():
        open(marker, "w").write(str(source.describe()["free"]))
        if mode.startswith("exception"):
            raise ValueError("on purpose")
        if mode.startswith("sigint"):
            os.kill(os.getpid(), signal.SIGINT)
        if mode.startswith("sigterm"):
            SigtermGuard().install()
            os.kill(os.getpid(), signal.SIGTERM)
        if mode.startswith("exit"):
            sys.exit(3)
        time.sleep(60)

    if mode.endswith("-with"):
        with source.hold(2) as got:
            assert got == 2, got
            misbehave()
    else:
        assert source.acquire(2) == 2
        misbehave()
    """
)

_FREE = (
    "from budgeted import hostwide; "
    "print(hostwide.tokens_for_this_process().describe()['free'])"
)


@pytest.mark.parametrize(
    "mode",
    [
        "exception-with",
        "exception",
        "sigint-with",
        "sigint",
        "sigterm-with",
        "sigterm",
        "exit",
    ],
)
def test_tokens_come_back_on_every_exit_path(tmp_path, mode):
    """Exception, SIGINT, SIGTERM (as budgeted turns it into SystemExit), exit:
    inside ``hold`` and, through atexit, outside it."""
    script = tmp_path / "release.py"
    script.write_text(_RELEASE)
    marker = tmp_path / "held"
    rules = {"a": [f"-+@{PYTHON} {script} {mode} {marker}", f'+@{PYTHON} -c "{_FREE}"']}
    done = _make(tmp_path, rules, jobs=3)
    assert marker.read_text() == "0"  # both tokens were held
    assert done.stdout.split() == ["2"], done.stderr  # and both came back
