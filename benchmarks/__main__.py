"""``python -m benchmarks``: every workload under every backend, side by side.

::

    python -m benchmarks                  # full run (5 repeats), ~10 min on 2 cores
    python -m benchmarks --quick          # < 2 min: smaller sizes, 2 repeats
    python -m benchmarks --workloads hgb_grid,blas_tail3 --repeats 7

Prints one markdown table per workload and the targets, and writes
``<out>/<name>.json``, ``.md``, ``.rst`` (for the docs) and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import RESULTS_DIR, machine_info, save_results
from .report import (
    evaluate_targets,
    load_results,
    markdown_report,
    plot_results,
    rst_report,
)
from .runner import RunSettings, run_workloads
from .variants import VARIANTS
from .workloads import DEFAULT_WORKLOADS, WORKLOADS

__all__ = ["main"]

QUICK_SCALE = 0.2
QUICK_REPEATS = 2


def _names(raw: str | None, known, default) -> tuple[str, ...]:
    if raw is None:
        return tuple(default)
    names = tuple(x.strip() for x in raw.split(",") if x.strip())
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        raise SystemExit(
            f"unknown name(s) {unknown or raw!r}; known: {', '.join(known)}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, fewer repeats (< 2 min)"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds (default 5; 2 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (default 1)"
    )
    parser.add_argument(
        "--workloads", help=f"comma-separated, from: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--variants", help=f"comma-separated, from: {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--scale", type=float, help="size factor (default 1; 0.2 with --quick)"
    )
    parser.add_argument(
        "--time-limit", type=float, help="seconds before a run counts as hung"
    )
    parser.add_argument(
        "--idle-limit",
        type=float,
        default=15.0,
        help="seconds without CPU use before a run counts as hung (0: never)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--name", help="results file stem (default: benchmarks[_quick])"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: rewrite the .md, .rst and .png of a saved results file",
    )
    return parser


def _settings(args: argparse.Namespace) -> RunSettings:
    repeats = args.repeats or (QUICK_REPEATS if args.quick else 5)
    scale = args.scale or (QUICK_SCALE if args.quick else 1.0)
    if repeats < 1 or args.warmup < 0 or scale <= 0:
        raise SystemExit("--repeats must be >= 1, --warmup >= 0 and --scale > 0")
    variants = _names(args.variants, VARIANTS, VARIANTS) if args.variants else None
    return RunSettings(
        scale=scale,
        repeats=repeats,
        warmup=args.warmup,
        time_limit=args.time_limit,
        idle_limit=args.idle_limit or None,
        variants=variants,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the tables; write the result files."""
    args = _parser().parse_args(argv)
    if args.render is not None:
        results, machine = load_results(args.render)
        _write_reports(results, args.render, machine, plot=not args.no_plot)
        return 0
    settings = _settings(args)
    names = _names(args.workloads, WORKLOADS, DEFAULT_WORKLOADS)
    name = args.name or ("benchmarks_quick" if args.quick else "benchmarks")

    def save(results: list[dict]) -> Path:  # after each workload, and at the end
        payload = {"results": results, "targets": evaluate_targets(results)}
        return save_results(name, payload, out_dir=args.out)

    results = run_workloads(names, settings, on_result=save)
    _write_reports(results, save(results), machine_info(), plot=not args.no_plot)
    return 0


def _write_reports(results: list[dict], path: Path, machine: dict, plot: bool) -> None:
    """Print the markdown report; write it, the rst tables and the plot."""
    targets = evaluate_targets(results)
    report = markdown_report(results, targets)
    print(report)
    path.with_suffix(".md").write_text(report)
    path.with_suffix(".rst").write_text(rst_report(results, targets, machine))
    if plot:
        plot_results(results, path.with_suffix(".png"))
    written = ".md, .rst" + (", .png" if plot else "")
    print(f"results: {path} ({written})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
