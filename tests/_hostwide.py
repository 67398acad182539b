"""Helpers of the host-wide token tests: clean environments, real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = Path(__file__).with_name("_token_program.py")
PYTHON = sys.executable
MAKE = "/usr/bin/make"
NINJA = str(Path(sys.executable).with_name("ninja"))
BUDGETED_RUN = [PYTHON, "-m", "budgeted", "run"]
TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without any make flags or budgeted settings, plus ``extra``."""
    drop = {"MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith("BUDGETED_")
    }
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end (at most :data:`TIMEOUT` s), output captured."""
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs
    )


def program(log: Path, name: str, threads: int, tasks: int, seconds: float) -> str:
    """The shell words of a :mod:`_token_program` run."""
    return f"{PYTHON} {PROGRAM} {log} {name} {threads} {tasks} {seconds}"
