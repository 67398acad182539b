"""A benchmark process that runs one variant, driven over a pipe.

Every variant lives in a process of its own for the whole benchmark, so each
keeps its executor warm: joblib's ``loky`` backend and ``budgeted`` share
loky's single reusable executor within a process, and alternating them there
restarts the workers on every switch. The parent (:mod:`benchmarks.timed_child`)
sends one JSON command a line on stdin; the child answers one JSON line on
the protocol stream (the original stdout; library output goes to stderr)::

    {"cmd": "setup", "workload": "blas_tail3", "scale": 1.0}  -> {"ok": true}
    {"cmd": "run"}                                 -> {"ok": true, "seconds": 0.8}
    {"cmd": "quit"}

Run as ``python -m benchmarks.child --variant NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import IO, Any

from .common import time_once
from .variants import Variant, get_variant
from .workloads import get_workload

__all__ = ["main"]


def _protocol_stream() -> IO[str]:
    """Keep the real stdout for answers and send fd 1 to stderr."""
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return stream


class _Session:
    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.workload = None
        self.state: Any = None

    def handle(self, message: dict) -> dict:
        cmd = message.get("cmd")
        if cmd == "setup":
            self.workload = get_workload(message["workload"])
            self.state = self.workload.prepare(float(message["scale"]))
            return {"ok": True}
        if cmd == "run":
            if self.workload is None:
                raise ValueError("'run' before 'setup'")
            return {"ok": True, "seconds": time_once(self._run_once)}
        raise ValueError(f"unknown command {cmd!r}")

    def _run_once(self) -> None:
        with self.variant.config():
            self.workload.run(self.state, self.variant)


def main(argv: list[str] | None = None) -> int:
    """Serve commands for one variant until ``quit`` or end of input."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("--variant", required=True)
    args = parser.parse_args(argv)
    answers = _protocol_stream()
    session = _Session(get_variant(args.variant))
    _answer(answers, {"ok": True, "ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("cmd") == "quit":
            break
        try:
            reply = session.handle(message)
        except Exception as exc:  # report, keep serving
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        _answer(answers, reply)
    return 0


def _answer(stream: IO[str], reply: dict) -> None:
    stream.write(json.dumps(reply) + "\n")
    stream.flush()


if __name__ == "__main__":
    sys.exit(main())
