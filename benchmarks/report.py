"""Turn results into tables (markdown, reStructuredText), targets and a plot."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import Timing, ratio_table

__all__ = [
    "NOISE_NOTE",
    "TARGETS",
    "Target",
    "evaluate_targets",
    "load_results",
    "markdown_report",
    "plot_results",
    "rst_report",
]

NOISE_NOTE = (
    "Note: on a 2-core machine timings are noisy (any other process takes a "
    "large share of the CPU); compare ratios within one run, where variants "
    "were interleaved per repeat, not absolute times across runs. Executors "
    "were warmed up first: loky's worker start-up is not measured."
)

CEILING_NOTE = (
    "Hand-tuned reference: the same ratio with the target's backend replaced "
    "by a hand-tuned run in the same rounds (for the grid search: joblib "
    "threads, each task limited to 1 OpenMP thread by hand). No backend "
    "running the same threads can do much better on this machine."
)


@dataclass(frozen=True)
class Target:
    """A ratio of medians the project aims for (reported, never asserted).

    ``ratio = best median of numerator / best median of denominator``; the
    target is met when ``ratio <op> threshold``. A target with a ``ceiling``
    also reports the same ratio with budgeted's side (``ceiling_replaces``:
    ``"numerator"`` or ``"denominator"``) replaced by the ``ceiling`` variants,
    a hand-tuned run beside it: how far this machine lets any backend go.
    """

    text: str
    workload: str
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]
    threshold: float
    at_least: bool  # True: ratio >= threshold; False: ratio <= threshold
    ceiling: tuple[str, ...] = ()
    ceiling_replaces: str = "denominator"

    def reference(self, timings: dict[str, Timing]) -> float | None:
        """The ratio the ``ceiling`` variants reach (None without one)."""
        if not self.ceiling:
            return None
        if self.ceiling_replaces == "numerator":
            return _ratio(timings, self.ceiling, self.denominator)
        return _ratio(timings, self.numerator, self.ceiling)

    def evaluate(self, timings: dict[str, Timing]) -> tuple[float | None, bool]:
        """Return ``(ratio, met)``; ratio is None when a side has no time."""
        ratio = _ratio(timings, self.numerator, self.denominator)
        if ratio is None:
            return None, False
        compare: Callable[[float, float], bool] = (
            operator.ge if self.at_least else operator.le
        )
        return ratio, compare(ratio, self.threshold)


def _ratio(
    timings: dict[str, Timing], top: Sequence[str], bottom: Sequence[str]
) -> float | None:
    """Best median of ``top`` over best median of ``bottom`` (None if missing)."""
    numerator, denominator = _best(timings, top), _best(timings, bottom)
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _best(timings: dict[str, Timing], labels: Sequence[str]) -> float | None:
    medians = [timings[x].median for x in labels if x in timings and timings[x].times]
    return min(medians) if medians else None


TARGETS = (
    Target(
        "HGB grid search: budgeted thread mode >= 2x faster than joblib threading",
        "hgb_grid",
        ("threading",),
        ("budgeted-threads",),
        2.0,
        True,
        ceiling=("threading-omp1",),
    ),
    Target(
        "HGB grid search: budgeted thread mode within 1.1x of loky",
        "hgb_grid",
        ("budgeted-threads",),
        ("loky",),
        1.1,
        False,
        ceiling=("threading-omp1",),
        ceiling_replaces="numerator",
    ),
    Target(
        "3 BLAS tasks on n_jobs=2: budgeted >= 1.25x faster than loky",
        "blas_tail3",
        ("loky",),
        ("budgeted",),
        1.25,
        True,
    ),
    Target(
        "8 uniform BLAS tasks: budgeted within 1.05x of the best of loky, sequential",
        "blas_uniform",
        ("budgeted",),
        ("loky", "sequential"),
        1.05,
        False,
    ),
    Target(
        "10^4 tiny tasks: budgeted not slower than loky",
        "tiny_tasks",
        ("budgeted",),
        ("loky",),
        1.0,
        False,
    ),
)


def load_results(path: Path) -> tuple[list[dict], dict]:
    """Read a results file back: ``(results, machine)`` with :class:`Timing` s."""
    document = json.loads(Path(path).read_text())
    results = []
    for result in document["results"]:
        timings = [
            Timing(t["label"], list(t["times"]), dict(t["extra"]))
            for t in result["timings"]
        ]
        results.append({**result, "timings": timings})
    return results, document["machine"]


def _by_label(result: dict) -> dict[str, Timing]:
    return {t.label: t for t in result["timings"]}


def evaluate_targets(results: Sequence[dict]) -> list[dict]:
    """Each target whose workload was run: its ratio and whether it is met."""
    by_name = {r["name"]: _by_label(r) for r in results}
    rows = []
    for target in TARGETS:
        if target.workload in by_name:
            ratio, met = target.evaluate(by_name[target.workload])
            op = ">=" if target.at_least else "<="
            rows.append(
                {
                    "target": target.text,
                    "ratio": ratio,
                    "wanted": f"{op} {target.threshold:g}",
                    "met": met,
                    "ceiling": target.reference(by_name[target.workload]),
                }
            )
    return rows


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"


def _ceiling_text(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def markdown_report(results: Sequence[dict], targets: Sequence[dict]) -> str:
    """Every workload's table, then the targets, then the noise note."""
    parts = [
        ratio_table(r["timings"], title=f"{r['name']}: {r['title']}") for r in results
    ]
    if targets:
        lines = [
            "### targets",
            "",
            "| target | ratio | wanted | met | hand-tuned reference |",
            "|---|---:|---|---|---:|",
        ]
        for row in targets:
            met = "yes" if row["met"] else "NO"
            ratio = _ratio_text(row["ratio"])
            ceiling = _ceiling_text(row.get("ceiling"))
            lines.append(
                f"| {row['target']} | {ratio} | {row['wanted']} | {met} | {ceiling} |"
            )
        parts.append("\n".join(lines))
        if any(row.get("ceiling") is not None for row in targets):
            parts.append(CEILING_NOTE)
    parts.append(NOISE_NOTE)
    return "\n\n".join(parts) + "\n"


def rst_report(results: Sequence[dict], targets: Sequence[dict], machine: dict) -> str:
    """The same tables as reStructuredText, for ``docs/benchmarks.rst``."""
    parts = [_rst_machine(machine, results)]
    for r in results:
        rows = [
            _rst_row(t, _best(_by_label(r), [x.label for x in r["timings"]]))
            for t in r["timings"]
        ]
        parts.append(
            _csv_table(
                f"{r['name']}: {r['title']}",
                ["variant", "median s", "min", "max", "x best"],
                rows,
            )
        )
    if targets:
        rows = [
            [
                row["target"],
                _ratio_text(row["ratio"]),
                row["wanted"],
                "yes" if row["met"] else "no",
                _ceiling_text(row.get("ceiling")),
            ]
            for row in targets
        ]
        header = ["target", "ratio", "wanted", "met", "hand-tuned reference"]
        parts.append(_csv_table("Targets", header, rows))
        if any(row.get("ceiling") is not None for row in targets):
            parts.append(CEILING_NOTE)
    return "\n\n".join(parts) + "\n"


def _rst_machine(machine: dict, results: Sequence[dict]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    blas = ", ".join(
        f"{p['internal_api']} {p['version'] or '?'} ({p['num_threads']} threads)"
        for p in machine["thread_pools"]
    )
    first = results[0] if results else {"scale": "?", "repeats": "?"}
    env = ", ".join(f"{k}={v}" for k, v in machine.get("env", {}).items()) or "none set"
    load = ", ".join(str(x) for x in machine.get("load_average", ())) or "unknown"
    return "\n\n".join(
        [
            f"Measured {machine['date_utc']} on {machine['cpu_count']} cores "
            f"({machine['usable_cpus']} usable), {machine['cpu_model']}; "
            f"Python {machine['python']}; {versions}.",
            f"Native pools: {blas}. OpenBLAS/loky variables: {env}.",
            f"Load average when saved (1, 5, 15 min): {load}.",
            f"Scale {first['scale']}, {first['repeats']} repeats "
            "(medians; min and max).",
            *_quick_warning(first["scale"]),
        ]
    )


def _quick_warning(scale) -> list[str]:
    if scale == 1.0:
        return []
    return [
        ".. note::\n\n"
        "   A reduced-size run (not ``--scale 1``): a check that the harness\n"
        "   works, not numbers to quote. ``python -m benchmarks`` on a quiet\n"
        "   machine gives the real ones."
    ]


def _rst_row(t: Timing, best: float | None) -> list[str]:
    if not t.times:
        return [t.label, t.extra.get("status", "no result"), "", "", ""]
    ratio = f"{t.median / best:.2f}" if best else ""
    return [t.label, f"{t.median:.3f}", f"{t.min:.3f}", f"{t.max:.3f}", ratio]


def _csv_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    def quote(cells: list[str]) -> str:
        return ", ".join('"' + str(c).replace('"', '""') + '"' for c in cells)

    lines = [f".. csv-table:: {title}", f"   :header: {quote(header)}", ""]
    lines += [f"   {quote(row)}" for row in rows]
    return "\n".join(lines)


def plot_results(results: Sequence[dict], path: Path) -> Path:
    """Draw one bar chart per workload (median, min-max whiskers) to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            'the plot needs matplotlib: pip install "budgeted[bench]"'
        ) from None
    n_cols = 2
    n_rows = -(-len(results) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(11, 2.6 * n_rows), squeeze=False)
    for ax, result in zip(axes.flat, results, strict=False):
        _plot_workload(ax, result)
    for ax in list(axes.flat)[len(results) :]:
        ax.set_visible(False)
    fig.suptitle("budgeted vs joblib backends (median s; whiskers: min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_workload(ax, result: dict) -> None:
    timings = result["timings"]
    labels = [t.label for t in timings]
    medians = [t.median if t.times else 0.0 for t in timings]
    low = [t.median - t.min if t.times else 0.0 for t in timings]
    high = [t.max - t.median if t.times else 0.0 for t in timings]
    colors = ["tab:green" if x.startswith("budgeted") else "tab:gray" for x in labels]
    y = range(len(timings))
    ax.barh(y, medians, xerr=[low, high], color=colors, capsize=2)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(result["name"], fontsize=9)
    ax.set_xlabel("seconds", fontsize=8)
    best = _best(_by_label(result), labels)
    right = max([t.max for t in timings if t.times], default=1.0)
    for i, t in enumerate(timings):
        if t.times:
            ax.text(t.max, i, f"  {t.median / best:.2f}x", va="center", fontsize=7)
        else:
            status = t.extra.get("status", "no result")
            ax.text(0, i, f" {status}", va="center", fontsize=7, color="tab:red")
    ax.set_xlim(0, right * 1.2)
