"""``python -m budgeted``: see the CPUs, the pools and the budgets, and check them.

``info`` describes this machine; ``check`` runs a short real workload under
the ``"budgeted"`` backend and compares what every worker saw with the plan.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable

from . import diagnostics
from .budget import check_n_cpus, check_positive_int, effective_n_jobs, split_budget
from .cpus import cpu_limits
from .tempdir import describe_temp_folder

__all__ = ["main"]


def _cli_int(name: str, check: Callable[[int], object]) -> Callable[[str], int]:
    """An argparse type: an integer that ``check`` accepts (its error is shown)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"{name} must be an integer, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def _check_n_jobs(n_jobs: int) -> None:
    effective_n_jobs(n_jobs, 1)  # the library's own rule: 0 has no meaning


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m budgeted", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="usable CPUs, thread pools, temp folder")
    check = commands.add_parser("check", help="run a workload and verify budgets")
    for sub in (info, check):
        sub.add_argument("--n-jobs", type=_cli_int("n_jobs", _check_n_jobs), default=-1)
        sub.add_argument(
            "--n-cpus", type=_cli_int("n_cpus", check_n_cpus), help="plan for N CPUs"
        )
    info.add_argument("--json", action="store_true", help="machine-readable output")
    run = commands.add_parser("run", help="run a command under a jobserver")
    run.add_argument(
        "-j",
        "--jobs",
        type=_cli_int("-j", lambda n: check_positive_int("-j", n)),
        help="CPUs (default: usable)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ...")
    return parser


def _load_pools() -> list[dict]:
    """Import the usual numeric libraries so their pools can be listed."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    _load_openmp()
    return threadpool_info()


def _load_openmp() -> None:
    """Load scikit-learn's OpenMP runtime, when scikit-learn is installed."""
    with contextlib.suppress(ImportError):
        import sklearn.utils._openmp_helpers  # noqa: F401


def info_report(n_jobs: int, n_cpus: int | None) -> dict:
    """Everything ``info`` prints, as a dict."""
    limits = cpu_limits()
    planned = limits.usable if n_cpus is None else n_cpus
    workers = effective_n_jobs(n_jobs, planned)
    return {
        "usable_cpus": limits.usable,
        "limited_by": limits.limited_by,
        "limits": limits.as_dict(),
        "thread_pools": [
            {k: p[k] for k in ("internal_api", "num_threads", "version", "filepath")}
            for p in _load_pools()
        ],
        "temp_folder": _temp_folder_report(),
        "plan": {
            "n_cpus": planned,
            "n_jobs": workers,
            "budgets": list(split_budget(planned, workers)),
        },
        "host_tokens": diagnostics.host_tokens(planned),
    }


def _print_info(report: dict) -> None:
    print(f"usable CPUs: {report['usable_cpus']} (set by {report['limited_by']})")
    for name, value in report["limits"].items():
        print(f"  {name:<10} {'-' if value is None else value}")
    print("thread pools in this process:")
    for pool in report["thread_pools"]:
        print(
            f"  {pool['internal_api']:<10} {pool['num_threads']:>3} threads  "
            f"{pool['version'] or ''}  {pool['filepath']}"
        )
    print(_memmap_line(report["temp_folder"]))
    plan = report["plan"]
    print(
        f"plan for n_jobs={plan['n_jobs']} on {plan['n_cpus']} CPUs: "
        f"budgets {plan['budgets']}"
    )
    for line in diagnostics.host_token_lines(report["host_tokens"]):
        print(line)


def _temp_folder_report() -> dict:
    try:
        return describe_temp_folder()
    except OSError as exc:  # a bad JOBLIB_TEMP_FOLDER: say so, do not crash
        return {"path": None, "reason": str(exc), "free_bytes": None}


def _memmap_line(folder: dict) -> str:
    """Where arrays over ``max_nbytes`` go, and why (see budgeted.tempdir)."""
    if folder["path"] is None:
        return f"memmap folder: unusable: {folder['reason']}"
    line = (
        f"memmap folder: {folder['path']} ({folder['reason']}; "
        f"{folder['free_bytes'] / 2**30:.1f} GiB free)"
    )
    if "shm_max_bytes" in folder:
        line += (
            f"; arrays up to {folder['shm_max_bytes'] / 2**30:.1f} GiB go to"
            f" /dev/shm, larger ones to {folder['fallback']}"
        )
    return line


def _matmul() -> None:
    import numpy as np

    a = np.random.default_rng(0).random((400, 400))
    for _ in range(3):
        a = a @ a / 400


def run_check(n_jobs: int, n_cpus: int | None) -> int:
    """Run a BLAS (and OpenMP) workload; return 0 when every budget held."""
    from joblib import Parallel, delayed, parallel_config

    planned = cpu_limits().usable if n_cpus is None else n_cpus
    planned = min(planned, diagnostics.jobserver_jobs() or planned)  # make -jN
    workers = effective_n_jobs(n_jobs, planned)
    expected = split_budget(planned, workers)
    _load_pools()
    with tempfile.TemporaryDirectory(prefix="budgeted-check-") as tmp:
        barrier = diagnostics.FileBarrier(tmp, workers)
        with parallel_config("budgeted", n_jobs=workers, n_cpus=planned):
            probes = Parallel()(delayed(_probe_task)(barrier) for _ in range(workers))
    print(f"plan: {workers} workers on {planned} CPUs, budgets {list(expected)}")
    ok = True
    for p in sorted(probes, key=lambda p: p.pid):
        held = all(n == p.budget for n in p.pools.values())
        ok &= held
        pools = ", ".join(f"{k}={v}" for k, v in sorted(p.pools.items()))
        print(
            f"  pid {p.pid}: budget {p.budget}; pools {pools}; "
            f"{p.os_threads} OS threads  [{'ok' if held else 'OVER BUDGET'}]"
        )
    observed = Counter(p.budget for p in probes)
    if observed != Counter(expected):
        print(f"budgets observed {sorted(observed.elements())} != plan")
        ok = False
    print("budgets hold" if ok else "budgets DO NOT hold")
    return 0 if ok else 1


def _probe_task(barrier):
    _load_openmp()
    return diagnostics.probe(barrier, work=_matmul)


def _run(jobs: int | None, command: list[str]) -> int:
    """``run``: CMD under a fifo jobserver (see budgeted.hostwide.server)."""
    from .hostwide.server import run_jobserver

    command = command[1:] if command[:1] == ["--"] else command
    if not command:
        print("python -m budgeted run: error: no command after --", file=sys.stderr)
        return 2
    try:
        return run_jobserver(command, cpu_limits().usable if jobs is None else jobs)
    except ValueError as exc:  # -j above MAX_JOBS
        print(f"python -m budgeted run: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # CMD not found or not executable, as a shell says
        print(f"python -m budgeted run: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m budgeted``."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args.jobs, args.cmd)
    if args.command == "info":
        report = info_report(args.n_jobs, args.n_cpus)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_info(report)
        return 0
    return run_check(args.n_jobs, args.n_cpus)


if __name__ == "__main__":
    sys.exit(main())
