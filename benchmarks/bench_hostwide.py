"""Host-wide budgets (issue 16): programs that share the CPUs with each other.

Run ``python -m benchmarks.bench_hostwide [--quick] [--rounds N]
[--parts pairs,make,tiny] [--snapshot REV]``. Three parts, each in rounds
whose variants run one after the other in an order rotated every round
(machine noise is spread over all of them); medians over the rounds:

``pairs``
    Two programs (:mod:`benchmarks.hostwide_program`, separate ``python``
    processes) started together, each the HGB grid search or 8 uniform BLAS
    tasks with ``n_jobs=-1``: both on ``loky``; both on ``budgeted`` with the
    host ledger off (``BUDGETED_LEDGER=off``: budgeted before host-wide
    tokens); both on ``budgeted`` with a fresh private 0700 ledger folder per
    run. Every program also runs alone once a round (its own variant), for
    the slowdowns of the mixed pair.
``make``
    ``make -j2`` compiling generated C files, and the grid search started
    by the same ``make -j2`` in a ``+`` recipe (so it is a client of make's
    pipe jobserver): under ``loky``, under ``budgeted`` (the jobserver), and
    under ``budgeted`` with ``BUDGETED_JOBSERVER=0 BUDGETED_LEDGER=off``.
    References: the build alone, the grid search alone (same ``make -j2``).
``tiny``
    10^4 ``delayed(abs)(i)`` on ``Parallel(n_jobs=2)`` under ``budgeted``,
    ledger on vs off (``parallel_config(ledger=...)``), in turn in one
    long-lived process on the same warm workers (two processes, one per
    variant, differed by up to 8 % by themselves).

While programs run, the driver samples every 20 ms the threads in the
running state (``R`` in ``/proc/<pid>/task/<tid>/stat``: running or ready
to run) of their whole process trees, and reports the peak, the 95th
percentile and the mean, and the share of samples above the usable CPUs.
Programs get a clean environment (``PATH``, ``HOME``, ``LANG``,
``PYTHONPATH`` and the variables of the variant only). ``--snapshot REV``
runs budgeted from ``git archive REV src`` (the working tree may be in the
middle of an edit). Results: ``results/hostwide.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .common import RESULTS_DIR, save_results

__all__ = [
    "MakeRun",
    "PairRun",
    "Samples",
    "balance",
    "main",
    "makefile_text",
    "running_threads",
    "summarize",
]

REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
PERIOD = 0.02  # seconds between two samples of the running threads
REFRESH = 5  # look for new descendants every REFRESH samples
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAIRS = {
    "hgb+hgb": ("hgb", "hgb"),
    "blas+blas": ("blas", "blas"),
    "hgb+blas": ("hgb", "blas"),
}
PAIR_VARIANTS = ("loky", "budgeted-off", "budgeted-ledger", "budgeted-hold")
#: Variants the goals are checked on: the ledger, and the ledger with the
#: grid search's refit under ``budgeted.hold_cpus`` (the same work).
GOAL_VARIANTS = ("budgeted-ledger", "budgeted-hold")
MAKE_VARIANTS = ("loky", "budgeted", "budgeted-local")
MAKE_REFERENCES = ("build-alone", "grid-alone-loky", "grid-alone-budgeted")
TINY_VARIANTS = ("ledger-on", "ledger-off")
GOALS = {
    "makespan": "makespan <= loky's (ratio of medians <= 1)",
    "balance": "the two programs' times (mixed pair: CPU shares while both "
    "compute) within 1.2x of each other (median <= 1.2)",
    "threads": "running threads of both trees never above the usable CPUs",
    "tiny": "10^4 tiny tasks, ledger on / off <= 1.05",
    "tiny1": "10^4 tiny tasks, batch_size=1, ledger on / off <= 1.05",
}


# -- pure helpers (tested in tests/test_benchmarks.py) ---------------------------
def running_threads(stat_texts: Iterable[str]) -> int:
    """How many of these ``/proc/<pid>/task/<tid>/stat`` texts are in state R.

    The state is the first field after the command's closing parenthesis (the
    command itself may hold spaces and parentheses).
    """
    count = 0
    for text in stat_texts:
        _, _, rest = text.rpartition(")")
        fields = rest.split()
        if fields and fields[0] == "R":
            count += 1
    return count


def process_cpu(stat_text: str) -> float:
    """User + system CPU seconds of a process, from its ``/proc/PID/stat``."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def balance(times: Sequence[float]) -> float:
    """Slowest over fastest (1.0: equal); ``nan`` without two positive times."""
    good = [t for t in times if t > 0]
    if len(good) < 2:
        return float("nan")
    return max(good) / min(good)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; ``nan`` if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Samples:
    """Counts of running threads, one per sample."""

    counts: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    #: CPU seconds each tree had used, at each sample
    cpu: list[list[float]] = field(default_factory=list)

    def add(self, count: int, epoch: float, cpu: list[float] | None = None) -> None:
        self.counts.append(count)
        self.epochs.append(epoch)
        self.cpu.append(cpu or [])

    def cpu_shares(self, window: tuple[float, float]) -> list[float] | None:
        """Each tree's share of the CPU time the trees used between two
        epochs (from the first to the last sample inside); None if unknown."""
        inside = [
            c
            for c, t in zip(self.cpu, self.epochs, strict=True)
            if window[0] <= t <= window[1] and c
        ]
        if len(inside) < 2:
            return None
        used = [b - a for a, b in zip(inside[0], inside[-1], strict=True)]
        total = sum(used)
        if total <= 0 or min(used) < 0:
            return None
        return [u / total for u in used]

    def summary(self, cpus: int, window: tuple[float, float] | None = None) -> dict:
        """Peak, 95th percentile, mean, and the share of samples above ``cpus``.

        ``window``: only the samples taken between these two epochs.
        """
        c = self.counts
        if window is not None:
            c = [
                n
                for n, t in zip(c, self.epochs, strict=True)
                if window[0] <= t <= window[1]
            ]
        if not c:
            return {"samples": 0}
        return {
            "samples": len(c),
            "peak": max(c),
            "p95": percentile(c, 95),
            "mean": round(statistics.fmean(c), 3),
            "above_cpus": round(sum(x > cpus for x in c) / len(c), 4),
        }


def median_or_nan(values: Iterable[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarize(runs: Sequence[dict], keys: Sequence[str]) -> dict:
    """Median, min and max of each key over the runs (missing keys skipped)."""
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None and r[key] == r[key]]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return out


def rotated(items: Sequence[str], round_: int) -> list[str]:
    """``items`` rotated by ``round_`` (each variant goes first in turn)."""
    k = round_ % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def makefile_text(n_files: int, grid_cmd: str) -> str:
    """A Makefile: ``all`` = ``grid`` (a ``+`` recipe) and ``build`` (C files)."""
    objs = " ".join(f"c{i:02d}.o" for i in range(n_files))
    return f"""\
OBJS = {objs}
GRID = {grid_cmd}
.PHONY: all build grid clean
all: grid build
build: prog
\t@date +%s.%N > build.done
prog: $(OBJS)
\t@$(CC) -o $@ $(OBJS) main.c
%.o: %.c
\t@$(CC) -O2 -c $< -o $@
grid:
\t+@$(GRID)
clean:
\t@rm -f $(OBJS) prog build.done grid.json
"""


def c_source(index: int, funcs: int = 16, lines: int = 40) -> str:
    """A C file of arithmetic that takes gcc -O2 about 0.2-0.4 s."""
    rng = random.Random(index)
    ops = (
        "a = a * {m}u + b;",
        "b ^= (a >> {s}) + c;",
        "c += (b << {s}) ^ a * {m}u;",
        "if (c & {m}u) a -= c / ({m}u | 1u); else b += a % ({m}u | 1u);",
    )
    out = ["#include <stdint.h>"]
    for f in range(funcs):
        out += [
            f"uint64_t f{index}_{f}(uint64_t x, uint64_t y, int n) {{",
            "  uint64_t a = x, b = y, c = x ^ y;",
            "  for (int k = 0; k < n; k++) {",
        ]
        for _ in range(lines):
            op = rng.choice(ops)
            out.append(
                "    " + op.format(m=rng.randrange(3, 1 << 20), s=rng.randrange(1, 31))
            )
        out += ["  }", "  return a + b + c;", "}"]
    return "\n".join(out) + "\n"


# -- running programs and sampling them -------------------------------------------
def clean_env(pythonpath: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": pythonpath,
    }
    env.update(extra or {})
    return env


class TreeSampler:
    """Running threads of the process trees under some roots, sampled."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.known: dict[int, psutil.Process] = {}
        self.tree: dict[int, int] = {}  # pid -> index of its root
        self.samples = Samples()
        self._tick = 0
        self._refresh()

    def _refresh(self) -> None:
        for index, pid in enumerate(self.roots):
            with contextlib.suppress(psutil.Error):
                root = self.known.get(pid) or psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    self.known.setdefault(p.pid, p)
                    self.tree.setdefault(p.pid, index)

    def sample(self) -> None:
        if self._tick % REFRESH == 0:
            self._refresh()
        self._tick += 1
        texts = []
        cpu = [0.0] * len(self.roots)
        for pid in list(self.known):
            task = f"/proc/{pid}/task"
            try:
                tids = os.listdir(task)
            except OSError:
                self.known.pop(pid, None)  # gone
                continue
            for tid in tids:
                with contextlib.suppress(OSError), open(f"{task}/{tid}/stat") as f:
                    texts.append(f.read())
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                cpu[self.tree[pid]] += process_cpu(f.read())
        self.samples.add(running_threads(texts), time.time(), cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_together(
    commands: Sequence[tuple[list[str], dict, Path]], limit: float
) -> dict:
    """Start the commands at once; sample until all exit; times and threads."""
    cpu0 = _children_cpu()
    start = time.monotonic()
    start_epoch = time.time()
    procs = [
        subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
        for cmd, env, cwd in commands
    ]
    sampler = TreeSampler([p.pid for p in procs])
    ends: list[float | None] = [None] * len(procs)
    next_tick = start
    while None in ends:
        now = time.monotonic()
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = now - start
        if now - start > limit:
            for p in procs:
                with contextlib.suppress(OSError):
                    p.kill()
            raise RuntimeError(
                f"programs still running after {limit:.0f} s: {commands}"
            )
        sampler.sample()
        next_tick += PERIOD
        time.sleep(max(0.0, next_tick - time.monotonic()))
    outputs = [p.stdout.read() for p in procs]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"exit codes {codes}: {commands}\n{outputs}")
    return {
        "start_epoch": start_epoch,
        "times": ends,
        "makespan": max(ends),
        "cpu_seconds": round(_children_cpu() - cpu0, 3),
        "samples": sampler.samples,
        "outputs": outputs,
    }


def _pythonpath(snapshot: Path | None) -> str:
    parts = ([str(snapshot)] if snapshot else []) + [str(REPO)]
    return os.pathsep.join(parts)


def make_snapshot(rev: str) -> tuple[Path, str]:
    """``git archive REV src`` in a temporary folder; (its src path, commit)."""
    commit = subprocess.check_output(
        ["git", "rev-parse", "--short", rev], cwd=REPO, text=True
    ).strip()
    folder = Path(tempfile.mkdtemp(prefix=f"budgeted-bench-src-{commit}-"))
    archive = subprocess.run(
        ["git", "archive", rev, "src"], cwd=REPO, check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src", commit


@contextlib.contextmanager
def fresh_ledger():
    """A private (0700) ledger folder for one run, removed after."""
    base = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="budgeted-bench-ledger-", dir=base)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- part 1: two programs started together ----------------------------------------
@dataclass
class PairRun:
    pair: str
    variant: str
    round: int
    times: list[float]
    makespan: float
    cpu_seconds: float
    threads: dict

    def as_dict(self) -> dict:
        return {
            "pair": self.pair,
            "variant": self.variant,
            "round": self.round,
            "times": [round(t, 3) for t in self.times],
            "makespan": round(self.makespan, 3),
            "balance": round(balance(self.times), 3),
            "cpu_seconds": self.cpu_seconds,
            "threads": self.threads,
        }


def _program(workload: str, variant: str, scale: dict) -> list[str]:
    backend = "loky" if variant == "loky" else "budgeted"
    hold = ["--hold-refit"] if variant == "budgeted-hold" else []
    return [
        sys.executable,
        "-m",
        "benchmarks.hostwide_program",
        "run",
        "--workload",
        workload,
        "--backend",
        backend,
        "--scale",
        str(scale[workload]),
        *hold,
    ]


def _variant_env(variant: str, ledger: str | None) -> dict[str, str]:
    if variant == "budgeted-off":
        return {"BUDGETED_LEDGER": "off"}
    if variant in ("budgeted-ledger", "budgeted-hold"):
        return {"BUDGETED_LEDGER": ledger}
    return {}


def run_pair(workloads, variant, scale, pythonpath, cpus, limit) -> dict:
    with fresh_ledger() as ledger:
        env = clean_env(pythonpath, _variant_env(variant, ledger))
        commands = [(_program(w, variant, scale), env, REPO) for w in workloads]
        got = run_together(commands, limit)
    samples = got.pop("samples")
    got["threads"] = samples.summary(cpus)
    records = [json.loads(line) for line in got["outputs"]]
    if len(records) > 1:  # while every program computes (after its imports)
        window = (max(r["began"] for r in records), min(r["ended"] for r in records))
        got["threads_computing"] = samples.summary(cpus, window)
        got["cpu_shares"] = samples.cpu_shares(window)
    return got


def part_pairs(rounds: int, scale: dict, pythonpath: str, cpus: int, limit: float):
    runs: list[dict] = []
    solos: list[dict] = []
    for round_ in range(rounds):
        for pair in rotated(list(PAIRS), round_):
            for variant in rotated(PAIR_VARIANTS, round_):
                got = run_pair(PAIRS[pair], variant, scale, pythonpath, cpus, limit)
                run = PairRun(
                    pair,
                    variant,
                    round_,
                    got["times"],
                    got["makespan"],
                    got["cpu_seconds"],
                    got["threads"],
                ).as_dict()
                run["threads_computing"] = got.get("threads_computing")
                run["cpu_shares"] = got.get("cpu_shares")
                runs.append(run)
                _progress(
                    f"  pairs r{round_} {pair:9s} {variant:15s} "
                    f"times {run['times']} running peak {run['threads'].get('peak')}"
                    f" mean {run['threads'].get('mean')}"
                )
        for workload in rotated(["hgb", "blas"], round_):
            for variant in rotated(PAIR_VARIANTS, round_):
                got = run_pair([workload], variant, scale, pythonpath, cpus, limit)
                solos.append(
                    {
                        "workload": workload,
                        "variant": variant,
                        "round": round_,
                        "time": round(got["times"][0], 3),
                        "cpu_seconds": got["cpu_seconds"],
                        "threads": got["threads"],
                    }
                )
    return runs, solos


def pair_table(
    runs: list[dict], solos: list[dict], cpus: int
) -> tuple[list[dict], str]:
    """Rows per pair and variant: medians, ratios to loky, goals."""
    solo = {
        (w, v): median_or_nan(
            s["time"] for s in solos if (s["workload"], s["variant"]) == (w, v)
        )
        for w in ("hgb", "blas")
        for v in PAIR_VARIANTS
    }
    rows = []
    for pair, workloads in PAIRS.items():
        loky = median_or_nan(
            r["makespan"] for r in runs if (r["pair"], r["variant"]) == (pair, "loky")
        )
        for variant in PAIR_VARIANTS:
            mine = [r for r in runs if (r["pair"], r["variant"]) == (pair, variant)]
            if not mine:
                continue
            makespan = median_or_nan(r["makespan"] for r in mine)
            shared = [r for r in mine if r.get("cpu_shares")]
            # the programs' slowdowns against running alone (same variant)
            slow = [
                [
                    t / solo[(w, variant)]
                    for t, w in zip(r["times"], workloads, strict=True)
                ]
                for r in mine
            ]
            rows.append(
                {
                    "pair": pair,
                    "variant": variant,
                    "runs": len(mine),
                    "makespan": makespan,
                    "makespan_vs_loky": makespan / loky,
                    "program_times": [
                        median_or_nan(r["times"][i] for r in mine) for i in (0, 1)
                    ],
                    "balance": median_or_nan(r["balance"] for r in mine),
                    "slowdown_balance": median_or_nan(balance(s) for s in slow),
                    "cpu_shares": [
                        median_or_nan(r["cpu_shares"][i] for r in shared)
                        for i in (0, 1)
                    ],
                    "share_balance": median_or_nan(
                        balance(r["cpu_shares"]) for r in shared
                    ),
                    "cpu_seconds": median_or_nan(r["cpu_seconds"] for r in mine),
                    **_running_stats(mine),
                }
            )
    lines = [
        "| pair | variant | makespan s | / loky | program times s | balance | "
        "slowdown balance | CPU share while both compute (balance) | CPU s | "
        "running peak (max / median) | p95 | mean | "
        f"samples > {cpus} | both computing: peak (median) / mean / > {cpus} |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        times = " / ".join(f"{t:.2f}" for t in r["program_times"])
        shares = " / ".join(f"{s:.2f}" for s in r["cpu_shares"])
        lines.append(
            f"| {r['pair']} | {r['variant']} | {r['makespan']:.2f} | "
            f"{r['makespan_vs_loky']:.2f} | {times} | {r['balance']:.2f} | "
            f"{r['slowdown_balance']:.2f} | {shares} ({r['share_balance']:.2f}) | "
            f"{r['cpu_seconds']:.1f} | "
            f"{r['peak_running']} / {r['median_peak_running']:.0f} | "
            f"{r['p95_running']:.0f} | "
            f"{r['mean_running']:.2f} | {100 * r['share_above_cpus']:.0f} % | "
            f"{r['computing_peak']:.0f} / {r['computing_mean']:.2f} / "
            f"{100 * r['computing_above_cpus']:.0f} % |"
        )
    solo_lines = [
        "| program alone | " + " | ".join(PAIR_VARIANTS) + " |",
        "|---|" + "---:|" * len(PAIR_VARIANTS),
    ]
    for w in ("hgb", "blas"):
        solo_lines.append(
            f"| {w} | "
            + " | ".join(f"{solo[(w, v)]:.2f}" for v in PAIR_VARIANTS)
            + " |"
        )
    return rows, "\n".join(lines) + "\n\n" + "\n".join(solo_lines)


def _running_stats(runs: list[dict]) -> dict:
    """Running-thread figures of a variant's runs (medians, and the peak)."""
    threads = [r["threads"] for r in runs]
    return {
        "peak_running": max(t["peak"] for t in threads),
        "median_peak_running": median_or_nan(t["peak"] for t in threads),
        "p95_running": median_or_nan(t["p95"] for t in threads),
        "mean_running": median_or_nan(t["mean"] for t in threads),
        "share_above_cpus": median_or_nan(t["above_cpus"] for t in threads),
        **_computing(runs),
    }


def _computing(runs: list[dict]) -> dict:
    """Medians of the running-thread figures while both programs computed."""
    found = [
        r["threads_computing"]
        for r in runs
        if (r.get("threads_computing") or {}).get("samples")
    ]
    return {
        "computing_peak": median_or_nan(t["peak"] for t in found),
        "computing_mean": median_or_nan(t["mean"] for t in found),
        "computing_above_cpus": median_or_nan(t["above_cpus"] for t in found),
    }


# -- part 2: beside make -j2 --------------------------------------------------------
@dataclass
class MakeRun:
    variant: str
    round: int
    makespan: float
    build: float | None
    grid: float | None
    cpu_seconds: float
    threads: dict


def prepare_build(folder: Path, n_files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (folder / f"c{i:02d}.c").write_text(c_source(i))
    (folder / "main.c").write_text("int main(void) { return 0; }\n")


def _grid_cmd(backend: str, scale: float) -> str:
    return (
        f"{sys.executable} -m benchmarks.hostwide_program run --workload hgb "
        f"--backend {backend} --scale {scale} --out $(CURDIR)/grid.json"
    )


def _make_variant(variant: str) -> tuple[str, str, dict]:
    """(target, grid backend, extra environment) of a make variant."""
    return {
        "loky": ("all", "loky", {}),
        "budgeted": ("all", "budgeted", {}),
        "budgeted-local": (
            "all",
            "budgeted",
            {"BUDGETED_JOBSERVER": "0", "BUDGETED_LEDGER": "off"},
        ),
        "build-alone": ("build", "loky", {}),
        "grid-alone-loky": ("grid", "loky", {}),
        "grid-alone-budgeted": ("grid", "budgeted", {}),
    }[variant]


def run_make(
    folder: Path,
    n_files: int,
    variant: str,
    scale: float,
    pythonpath: str,
    cpus: int,
    limit: float,
) -> dict:
    target, backend, extra = _make_variant(variant)
    (folder / "Makefile").write_text(makefile_text(n_files, _grid_cmd(backend, scale)))
    subprocess.run(["make", "-s", "clean"], cwd=folder, check=True)
    with fresh_ledger() as ledger:
        extra = {"BUDGETED_LEDGER": ledger, **extra}  # a jobserver wins over it
        env = clean_env(pythonpath, extra)
        got = run_together([(["make", "-j2", target], env, folder)], limit)
    start = got["start_epoch"]
    build = grid = None
    build_end = record = None
    with contextlib.suppress(OSError, ValueError):
        build_end = float((folder / "build.done").read_text())
        build = build_end - start
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((folder / "grid.json").read_text())
        grid = record["ended"] - start
    computing = None
    if build_end is not None and record is not None:  # grid computes, build runs
        window = (record["began"], min(build_end, record["ended"]))
        computing = got["samples"].summary(cpus, window)
    return {
        "variant": variant,
        "makespan": round(got["makespan"], 3),
        "build": None if build is None else round(build, 3),
        "grid": None if grid is None else round(grid, 3),
        "cpu_seconds": got["cpu_seconds"],
        "threads": got["samples"].summary(cpus),
        "threads_computing": computing,
    }


def part_make(rounds, n_files, scale, pythonpath, cpus, limit, folder: Path):
    prepare_build(folder, n_files)
    runs = []
    for round_ in range(rounds):
        for variant in rotated(MAKE_VARIANTS + MAKE_REFERENCES, round_):
            run = run_make(folder, n_files, variant, scale, pythonpath, cpus, limit)
            run["round"] = round_
            runs.append(run)
            _progress(
                f"  make r{round_} {variant:20s} build {run['build']} grid "
                f"{run['grid']} make {run['makespan']} peak "
                f"{run['threads'].get('peak')}"
            )
    return runs


def make_table(runs: list[dict], cpus: int) -> tuple[list[dict], str]:
    rows = []
    for variant in MAKE_VARIANTS + MAKE_REFERENCES:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        rows.append(
            {
                "variant": variant,
                "runs": len(mine),
                "build": median_or_nan(
                    r["build"] for r in mine if r["build"] is not None
                ),
                "grid": median_or_nan(r["grid"] for r in mine if r["grid"] is not None),
                "makespan": median_or_nan(r["makespan"] for r in mine),
                "cpu_seconds": median_or_nan(r["cpu_seconds"] for r in mine),
                **_running_stats(mine),
            }
        )
    lines = [
        "| variant | build s | grid search s | make -j2 (both) s | CPU s | running "
        "peak "
        f"(max / median) | p95 | mean | samples > {cpus} | grid computing beside the "
        f"build: peak (median) / mean / > {cpus} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x):
        return "" if x != x else f"{x:.2f}"

    for r in rows:
        lines.append(
            f"| {r['variant']} | {fmt(r['build'])} | {fmt(r['grid'])} | "
            f"{r['makespan']:.2f} | "
            f"{r['cpu_seconds']:.1f} | {r['peak_running']} / "
            f"{r['median_peak_running']:.0f} | "
            f"{r['p95_running']:.0f} | {r['mean_running']:.2f} | "
            f"{100 * r['share_above_cpus']:.0f} % | {fmt(r['computing_peak'])} / "
            f"{fmt(r['computing_mean'])} / {fmt(100 * r['computing_above_cpus'])} % |"
        )
    return rows, "\n".join(lines)


# -- part 3: tiny tasks, ledger on / off ----------------------------------------------
def part_tiny(
    repeats: int, n_tasks: int, pythonpath: str, batch_size: str = "auto"
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v: [] for v in TINY_VARIANTS}
    with fresh_ledger() as ledger:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.hostwide_program",
                "serve-tiny",
                "--backend",
                "budgeted",
                "--tasks",
                str(n_tasks),
                "--batch-size",
                batch_size,
            ],
            env=clean_env(pythonpath, {"BUDGETED_LEDGER": ledger}),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            json.loads(server.stdout.readline())  # ready (warmed up)
            for round_ in range(repeats):
                for variant in rotated(TINY_VARIANTS, round_):
                    server.stdin.write(f"run {variant}\n")
                    server.stdin.flush()
                    times[variant].append(
                        json.loads(server.stdout.readline())["seconds"]
                    )
        finally:
            with contextlib.suppress(OSError):
                server.stdin.close()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return times


def tiny_ratio(times: dict[str, list[float]]) -> float:
    """Median with the ledger on over median with it off."""
    on, off = (median_or_nan(times[v]) for v in TINY_VARIANTS)
    return on / off


# -- report -------------------------------------------------------------------------
def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def goals(
    pair_rows: list[dict], tiny: dict | None, cpus: int, tiny1: dict | None = None
) -> list[dict]:
    found = []
    for r in pair_rows:
        if r["variant"] not in GOAL_VARIANTS:
            continue
        found.append(
            {
                "goal": "makespan",
                "pair": r["pair"],
                "variant": r["variant"],
                "value": r["makespan_vs_loky"],
                "met": r["makespan_vs_loky"] <= 1.0,
            }
        )
        # the mixed pair: programs of unequal lengths finish at unequal times
        # and slow down unequally even on perfectly shared CPUs; their CPU
        # shares while both compute say whether the CPUs were shared fairly
        key = "balance" if r["pair"] in ("hgb+hgb", "blas+blas") else "share_balance"
        found.append(
            {
                "goal": "balance",
                "pair": r["pair"],
                "variant": r["variant"],
                "measure": key,
                "value": r[key],
                "met": r[key] <= 1.2,
            }
        )
        found.append(
            {
                "goal": "threads",
                "pair": r["pair"],
                "variant": r["variant"],
                "value": r["peak_running"],
                "met": r["peak_running"] <= cpus,
            }
        )
    if tiny:
        ratio = tiny_ratio(tiny)
        found.append({"goal": "tiny", "value": ratio, "met": ratio <= 1.05})
    if tiny1:
        ratio = tiny_ratio(tiny1)
        found.append({"goal": "tiny1", "value": ratio, "met": ratio <= 1.05})
    return found


def _tiny_section(t: dict, batching: str, first: bool) -> list[str]:
    on, off = (median_or_nan(t["times"][v]) for v in TINY_VARIANTS)
    head = ["## 3. Token overhead per batch", ""] if first else []
    return [
        *head,
        f"{t['n_tasks']} x `delayed(abs)(-i)`, `Parallel(n_jobs=2)` ({batching}), "
        "budgeted, "
        + (
            "one warm process, ledger switched per call, in turn, "
            if t.get("one_process")
            else "two warm processes asked in turn, "
        )
        + f"{len(t['times']['ledger-on'])} runs each.",
        "",
        "| ledger | median s | min | max |",
        "|---|---:|---:|---:|",
        *(
            f"| {v} | {median_or_nan(t['times'][v]):.3f} | "
            f"{min(t['times'][v]):.3f} | {max(t['times'][v]):.3f} |"
            for v in TINY_VARIANTS
        ),
        "",
        f"on / off = {on / off:.3f}",
        "",
    ]


def markdown(document: dict) -> str:
    m = document["machine"]
    cpus = m["usable_cpus"]
    out = [
        "# Host-wide budgets: programs sharing the CPUs (issue 16)",
        "",
        f"Machine: {m['cpu_count']} CPUs ({cpus} usable), {m['cpu_model']}; load "
        "average "
        f"at start {document['load_average_at_start']}, at end {m['load_average']}; "
        f"Python {m['python']}, joblib {m['versions']['joblib']}, "
        f"scikit-learn {m['versions']['scikit-learn']}, numpy "
        f"{m['versions']['numpy']}, "
        f"{document['make_version']}. budgeted: {document['budgeted_source']}. "
        f"Date {m['date_utc']}.",
        "",
        f"Rounds: {document['settings']['rounds']} (variants interleaved round-robin, "
        "order "
        "rotated every round; medians over rounds). The machine is shared and noisy "
        "(other processes run tests): compare ratios within this run. Running threads: "
        "threads in state R (running or ready) of the programs' process trees, "
        "sampled every "
        f"{int(PERIOD * 1000)} ms by the driver; a sample above {cpus} means those "
        "trees "
        "alone asked for more CPUs than the machine has.",
        "",
    ]
    if "pairs" in document:
        s = document["settings"]
        n = round(1500 * s["scale"]["blas"] ** 0.5)
        out += [
            "## 1. Two programs started together (n_jobs=-1 each)",
            "",
            "hgb: `GridSearchCV(HistGradientBoostingClassifier(max_iter=50))`, 4 "
            "candidates, "
            f"cv=3, {round(20000 * s['scale']['hgb'])} x 30; blas: 8 tasks of 2 "
            "matmuls "
            f"{n}x{n}. "
            "Program time: from the start of both to that program's exit (interpreter "
            "start "
            "and imports included). balance: slower / faster program of a run "
            "(median); "
            "slowdown balance: the same with each time divided by that program's "
            "median time "
            "alone under the same variant (the fairness measure of the mixed pair). "
            "CPU s: user+system of both trees.",
            "",
            document["pairs"]["table"],
            "",
        ]
    if "make" in document:
        out += [
            "## 2. A grid search beside `make -j2` compiling C",
            "",
            document["make"]["how"],
            "",
            document["make"]["table"],
            "",
        ]
    for key, batching in (("tiny", "auto-batching"), ("tiny1", "batch_size=1")):
        if key in document:
            out += _tiny_section(document[key], batching, first=key == "tiny")
    out += [
        "## Goals (budgeted with the ledger on)",
        "",
        "| goal | pair | variant | value | met |",
        "|---|---|---|---:|---|",
    ]
    for g in document["goals"]:
        what = GOALS[g["goal"]]
        out.append(
            f"| {what} | {g.get('pair', '')} | {g.get('variant', '')} | "
            f"{g['value']:.2f} | "
            f"{'yes' if g['met'] else 'NO'} |"
        )
    notes = document.get("notes")
    if notes:
        out += ["", "## Notes", "", notes]
    return "\n".join(out) + "\n"


MAKE_HOW = (
    "One `make -j2` (GNU make {version}, pipe jobserver) builds {n_files} generated C "
    "files "
    "(`gcc -O2`, ~0.2-0.3 s each) and link, and runs the grid search (the hgb program, "
    "n_jobs=-1) in a `+` recipe, so the program gets make's jobserver descriptors in "
    "`MAKEFLAGS`: the grid search comes first in `all: grid build`, so it runs on "
    "make's "
    "implicit job slot and its further batches take tokens from make's pipe like any "
    "compile job. `budgeted-local`: the same with `BUDGETED_JOBSERVER=0 "
    "BUDGETED_LEDGER=off`. build: from the start of make to the end of the link; grid "
    "search: from the start of make to the program's end. `python -m budgeted run -j 2 "
    "-- "
    'sh -c "make -j2 & python grid.py; wait"` was not used: make 4.3 cannot be a '
    "client of "
    "a fifo jobserver ({fifo_note})."
)


def render(path: Path, notes: str = "") -> int:
    """Rewrite the markdown report of a saved results file (``notes``: replace)."""
    document = json.loads(path.read_text())
    if notes:
        document["notes"] = notes
        path.write_text(json.dumps(document, indent=2) + "\n")
    report = markdown(document)
    path.with_suffix(".md").write_text(report)
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_hostwide")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds of the pairs and make parts")
    parser.add_argument("--tiny-repeats", type=int, help="runs of each tiny variant")
    parser.add_argument("--parts", default="pairs,make,tiny")
    parser.add_argument("--hgb-scale", type=float, default=0.5)
    parser.add_argument("--blas-scale", type=float, default=1.0)
    parser.add_argument("--n-files", type=int, default=40, help="C files for make")
    parser.add_argument(
        "--snapshot", metavar="REV", help="run budgeted from git archive REV"
    )
    parser.add_argument("--fifo-note", default="", help="what make 4.3 said to a fifo")
    parser.add_argument("--notes", default="", help="text for the Notes section")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="run nothing: rewrite JSON's .md"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.notes)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    rounds = args.rounds or (1 if args.quick else 5)
    scale = {
        "hgb": args.hgb_scale * (0.2 if args.quick else 1),
        "blas": args.blas_scale * (0.2 if args.quick else 1),
    }
    n_files = 6 if args.quick else args.n_files
    tiny_repeats = args.tiny_repeats or (3 if args.quick else 15)
    name = args.name or ("hostwide_quick" if args.quick else "hostwide")
    from budgeted import usable_cpus

    cpus = usable_cpus()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    snapshot, source = None, "the installed (editable) package"
    if args.snapshot:
        snapshot, commit = make_snapshot(args.snapshot)
        source = f"`git archive {commit} src` (commit {commit})"
    pythonpath = _pythonpath(snapshot)
    make_version = subprocess.run(
        ["make", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    document: dict = {
        "settings": {
            "rounds": rounds,
            "scale": scale,
            "n_files": n_files,
            "tiny_repeats": tiny_repeats,
            "period_s": PERIOD,
            "parts": sorted(parts),
        },
        "load_average_at_start": load_at_start,
        "budgeted_source": source,
        "make_version": make_version,
        "goals_text": GOALS,
        "notes": args.notes,
    }
    limit = 600.0
    pair_rows: list[dict] = []
    tiny = None

    def flush() -> Path:  # after each part: a long run keeps what it measured
        tiny1 = (document.get("tiny1") or {}).get("times")
        document["goals"] = goals(pair_rows, tiny, cpus, tiny1)
        path = save_results(name, document, out_dir=args.out)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return path

    try:
        if "pairs" in parts:
            _progress("part 1: pairs")
            runs, solos = part_pairs(rounds, scale, pythonpath, cpus, limit)
            pair_rows, table = pair_table(runs, solos, cpus)
            document["pairs"] = {
                "runs": runs,
                "solos": solos,
                "rows": pair_rows,
                "table": table,
            }
            flush()
        if "make" in parts:
            _progress("part 2: make")
            with tempfile.TemporaryDirectory(prefix="budgeted-bench-make-") as tmp:
                mruns = part_make(
                    rounds, n_files, scale["hgb"], pythonpath, cpus, limit, Path(tmp)
                )
            mrows, mtable = make_table(mruns, cpus)
            how = MAKE_HOW.format(
                version=make_version.split()[-1],
                n_files=n_files,
                fifo_note=args.fifo_note or "see the report",
            )
            document["make"] = {
                "runs": mruns,
                "rows": mrows,
                "table": mtable,
                "how": how,
            }
            flush()
        if "tiny" in parts:
            _progress("part 3: tiny")
            n_tasks = 1000 if args.quick else 10_000
            tiny = part_tiny(tiny_repeats, n_tasks, pythonpath)
            document["tiny"] = {
                "n_tasks": n_tasks,
                "times": tiny,
                "ratio": tiny_ratio(tiny),
                "one_process": True,
            }
            flush()
        if "tiny1" in parts:  # one task per batch: the per-batch cost laid bare
            _progress("part 3b: tiny, batch_size=1")
            n_tasks = 500 if args.quick else 10_000
            times = part_tiny(tiny_repeats, n_tasks, pythonpath, batch_size="1")
            document["tiny1"] = {
                "n_tasks": n_tasks,
                "times": times,
                "ratio": tiny_ratio(times),
                "one_process": True,
            }
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot.parent, ignore_errors=True)
    path = flush()
    print(path.with_suffix(".md").read_text())
    _progress(f"results: {path} (.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
