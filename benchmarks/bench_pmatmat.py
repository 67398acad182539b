"""pmatmat: budgeted's methods next to lazylinop's own, on the same operators.

Run ``python -m benchmarks.bench_pmatmat [--quick] [--repeats N]``.

Operators (``--scale 1``; ``--quick`` is 0.25), each times ``A`` with 512
columns of float64:

* ``dense``: a 4000 x 4000 ndarray;
* ``sparse``: a scipy CSR array, 10^5 square with 10^6 nonzeros;
* ``composed``: the LazyLinOp ``M @ S + diag(d)`` (M dense 3000 x 3000,
  S sparse with 1 % nonzeros).

Variants, each in a fresh interpreter so no setting leaks between them:

* ``single``: ``L @ A``, one call (native pools use every core);
* ``lazylinop-<method>``: ``lazylinop.wip.parallel.pmatmat(aslazylinop(L))``
  as its documentation says: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
  and ``MKL_NUM_THREADS`` set to 1 before numpy is imported. Its ``process``
  method forks; ``lazylinop-process-spawn`` shows it failing under spawn;
* ``budgeted-<method>``: ``budgeted.linalg.pmatmat(L)``, no variable set.

``mpi`` variants run under ``mpiexec -n 2`` (rank 0 times the product).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Timing, machine_info, measure, ratio_table, save_results

__all__ = ["main"]

OPERATORS = ("dense", "sparse", "composed")
VARIANTS = (
    "single",
    "lazylinop-thread",
    "lazylinop-process",
    "lazylinop-mpi",
    "budgeted-thread",
    "budgeted-process",
    "budgeted-mpi",
)
ONE_THREAD = {
    v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
}
COLUMNS = 512
MPIEXEC = Path(sys.executable).parent / "mpiexec"


# -- child side: build, then time one variant ------------------------------------
def build(operator: str, scale: float):
    """The operator (from a seed, so every rank builds the same) and ``A``."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    if operator == "dense":
        n = int(4000 * scale)
        L = rng.random((n, n))
    elif operator == "sparse":
        n, nnz = int(100_000 * scale), int(1_000_000 * scale)
        rows, cols = rng.integers(0, n, nnz), rng.integers(0, n, nnz)
        L = sp.csr_array((rng.random(nnz), (rows, cols)), shape=(n, n))
    else:
        import lazylinop

        n = int(3000 * scale)
        S = sp.random(n, n, density=0.01, format="csr", random_state=1)
        diag = lazylinop.diag(rng.random(n))
        L = lazylinop.aslazylinop(rng.random((n, n))) @ lazylinop.aslazylinop(S) + diag
    return L, rng.random((n, COLUMNS))


def make_product(variant: str, L):
    """A function computing ``L @ A`` the variant's way, and a cleanup."""
    if variant == "single":
        return (lambda A: L @ A), (lambda: None)
    library, method = variant.split("-", 1)
    if library == "lazylinop":
        import multiprocessing

        import lazylinop
        from lazylinop.wip.parallel import pmatmat as lazy_pmatmat

        if method == "process-spawn":
            multiprocessing.set_start_method("spawn", force=True)
            method = "process"
        P = lazy_pmatmat(lazylinop.aslazylinop(L), method=method)
        return (lambda A: P @ A), (lambda: None)
    from budgeted.linalg import pmatmat

    P = pmatmat(L, method=method)
    return (lambda A: P @ A), P.close


def child(args) -> None:
    L, A = build(args.operator, args.scale)
    product, cleanup = make_product(args.child, L)
    comm = None
    if args.child.endswith("mpi"):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD

    def once():
        if comm is not None:
            comm.Barrier()
        product(A)

    try:
        timing = measure(args.child, once, repeats=args.repeats, warmup=args.warmup)
    finally:
        cleanup()
    if comm is None or comm.Get_rank() == 0:
        Path(args.out).write_text(json.dumps(timing.as_dict()))


# -- parent side --------------------------------------------------------------
def run_variant(variant: str, operator: str, args) -> Timing:
    """Run one variant in a fresh interpreter (under mpiexec for MPI)."""
    env = {**os.environ}
    if variant.startswith("lazylinop"):
        env.update(ONE_THREAD)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "timing.json"
        command = [sys.executable, "-m", "benchmarks.bench_pmatmat", "--child"]
        command += [variant, "--operator", operator, "--scale", str(args.scale)]
        command += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        command += ["--out", str(out)]
        if variant.endswith("mpi"):
            command = [str(MPIEXEC), "-n", "2", *command]
        start = time.perf_counter()
        returncode, stderr = _run_with_limit(command, env, args.time_limit)
        if returncode is None:
            return Timing(variant, [], {"status": f"over {args.time_limit:.0f} s"})
        if returncode != 0 or not out.exists():
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            return Timing(variant, [], {"status": f"fails: {last[:70]}"})
        saved = json.loads(out.read_text())
        wall = time.perf_counter() - start
        return Timing(variant, saved["times"], {"child_seconds": round(wall, 1)})


def _run_with_limit(command, env, limit: float) -> tuple[int | None, str]:
    """Run in a new session; on timeout kill the whole group (MPI ranks too)."""
    child = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return None, ""
    return child.returncode, stderr


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--scale", type=float, default=None)
    parser.add_argument("--operators", default=",".join(OPERATORS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--name", default=None)
    parser.add_argument("--child", metavar="VARIANT")
    parser.add_argument("--operator", default="dense")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = 0.25 if args.quick else 1.0
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.name is None:
        args.name = "pmatmat_quick" if args.quick else "pmatmat"
    return args


def run_rounds(operator: str, variants: list[str], args) -> tuple[list, list]:
    """Every variant once per round, in a rotated order, so noise is shared.

    Each round starts a fresh interpreter per variant. Returns the pooled
    timings (display order) and each round's best-of-ours ratio.
    """
    pooled = {v: Timing(v) for v in variants}
    per_round = []
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        this_round = {}
        for variant in variants[shift:] + variants[:shift]:
            if pooled[variant].extra.get("status"):
                continue  # failed before: it will fail again
            print(f"{operator} round {round_ + 1}: {variant}", file=sys.stderr)
            timing = run_variant(variant, operator, args)
            pooled[variant].times += timing.times
            if not timing.times:
                pooled[variant].extra["status"] = timing.extra["status"]
            this_round[variant] = timing
        per_round.append(best_ratio(this_round.values()))
    return list(pooled.values()), per_round


def main(argv=None) -> None:
    args = parse(argv)
    if args.child:
        return child(args)
    results, tables = {}, []
    operators = args.operators.split(",")
    for operator in operators:
        variants = args.variants.split(",")
        if operator == operators[0]:
            variants.append("lazylinop-process-spawn")  # its failure, once
        timings, per_round = run_rounds(operator, variants, args)
        title = f"{operator} (scale {args.scale}) @ A[:, {COLUMNS}], float64"
        rounds = ", ".join(f"{r:.2f}" for r in per_round)
        tables.append(
            ratio_table(timings, title=title)
            + f"\n\nbest budgeted / best lazylinop: {best_ratio(timings):.2f}"
            + f" (pooled medians; each round: {rounds})"
        )
        print(tables[-1] + "\n", flush=True)
        results[operator] = {"timings": timings, "ratio_per_round": per_round}
    payload = {"scale": args.scale, "rounds": args.rounds, "results": results}
    path = save_results(args.name, payload)
    path.with_suffix(".md").write_text(_header(args) + "\n\n".join(tables) + "\n")
    print(f"saved {path} (.md); machine: {machine_info().get('cpu_model', '?')}")


def _header(args) -> str:
    return (
        f"{args.rounds} rounds; in each, every variant runs in a fresh interpreter"
        f" ({args.warmup} untimed + {args.repeats} timed products), variants"
        " in a rotated order. Medians pool every round's times.\n\n"
    )


def best_ratio(timings) -> float:
    """Best of ours divided by best of lazylinop's (below 1: ours is faster)."""

    def best(prefix):
        medians = [t.median for t in timings if t.label.startswith(prefix) and t.times]
        return min(medians) if medians else float("nan")

    return best("budgeted") / best("lazylinop")


if __name__ == "__main__":
    main()
