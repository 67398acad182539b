"""An error on one MPI rank is an error on every rank, never a hang.

Each case is a real ``mpiexec -n 2`` run of :data:`SCRIPT` that fails on one
rank (or both); a subprocess timeout turns a regression into a failure rather
than a hung test run. Each rank writes its own output and exit status to
files, and both must name the failing rank and carry the original message.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_linalg_mpi import MPIEXEC

SCRIPT = """
import sys, time
import numpy as np
from mpi4py import MPI
from scipy.sparse.linalg import LinearOperator
import lazylinop
import budgeted.linalg.agreement
from budgeted.linalg import MPILop, pmatmat
from budgeted.linalg.mpi import gather_blocks

rank = MPI.COMM_WORLD.Get_rank()
case, folder = sys.argv[1], sys.argv[2]
M = np.arange(300.0).reshape(15, 20)


class Boom(Exception):
    pass


def failing(X):
    if rank == 1:
        raise Boom("boom on rank 1")
    return M @ X


def wrong_block(X):
    return M @ X if rank == 0 else np.ones((3, X.shape[1]))


def run():
    if case == "bad_shape":
        MPILop((15, 21), f"{folder}/M.npz", np.dtype("float64"))
    elif case == "missing_file":
        MPILop((15, 20), f"{folder}/missing.npz", np.float64)
    elif case == "unreadable_dtype":
        MPILop((15, 20), f"{folder}/strings.npz", np.float64)
    elif case == "object_file":
        MPILop((15, 20), f"{folder}/objects.npz", np.float64)
    elif case == "no_mpi_dtype":
        MPILop((15, 20), f"{folder}/M.npz", object)
    elif case == "mpilop_rows":
        op = MPILop((15, 20), f"{folder}/M.npz", np.float64)
        op @ np.ones((20 if rank == 0 else 19, 2))
    elif case == "mpilop_columns":
        op = MPILop((15, 20), f"{folder}/M.npz", np.float64, bcast_op=False)
        op.H @ np.ones((15, 2 + rank))
    elif case == "pmatmat_rows":
        pmatmat(M, method="mpi") @ np.ones((20 if rank == 0 else 19, 2))
    elif case == "pmatmat_columns":
        pmatmat(M, method="mpi") @ np.ones((20, 2 + rank))
    elif case == "user_matmat":
        L = LinearOperator(M.shape, matvec=failing, matmat=failing, dtype=M.dtype)
        pmatmat(L, method="mpi") @ np.ones((20, 4))
    elif case == "user_rmatmat_lazylinop":
        L = lazylinop.LazyLinOp(M.shape, matmat=lambda X: M @ X, rmatmat=failing_h)
        pmatmat(L, method="mpi").H @ np.ones((15, 4))
    elif case == "local_class":
        class Local(Exception):
            pass
        if rank == 1:
            def fail(X):
                raise Local("local failure")
        else:
            fail = lambda X: M @ X
        L = LinearOperator(M.shape, matvec=fail, matmat=fail, dtype=M.dtype)
        pmatmat(L, method="mpi") @ np.ones((20, 4))
    elif case == "wrong_block":
        L = LinearOperator(
            M.shape, matvec=wrong_block, matmat=wrong_block, dtype=M.dtype
        )
        pmatmat(L, method="mpi") @ np.ones((20, 4))
    elif case == "gather_blocks":
        local = np.ones((2, 1 if rank == 0 else 3))
        gather_blocks(MPI.COMM_WORLD, local, [1, 2], 2, axis=1)
    elif case == "abort":
        budgeted.linalg.agreement.RESCUE_SECONDS = 1.0
        P = pmatmat(M, method="mpi")
        if rank == 1:
            raise Boom("rank 1 stops early")
        time.sleep(40)  # rank 1 never joins this product: the job is aborted
        P @ np.ones((20, 2))
    print(f"rank {rank} did not fail", flush=True)


def failing_h(Y):
    if rank == 1:
        raise ZeroDivisionError("adjoint failed on rank 1")
    return M.T @ Y


try:
    run()
except Exception as exc:
    print(f"rank {rank} raised {type(exc).__name__}: {exc}", flush=True)
    raise
"""

# Each rank runs under sh, which keeps its output and exit status apart.
WRAPPER = '"$0" "$@" >"$DIR/out.$PMI_RANK" 2>&1; echo $? >"$DIR/status.$PMI_RANK"'

CASES = {
    # name: (exception each rank raises, what each says)
    "bad_shape": (
        "ValueError",
        "rank 0 of 2 failed: shape (15, 21) does not match {folder}/M.npz: (15, 20)",
    ),
    "missing_file": (
        "FileNotFoundError",
        "rank 0 of 2 failed: [Errno 2] No such file or directory",
    ),
    "unreadable_dtype": (
        "TypeError",
        "rank 0 of 2 failed: {folder}/strings.npz holds <U1, not readable as float64",
    ),
    "object_file": (
        "ValueError",
        "rank 0 of 2 failed: Object arrays cannot be loaded when allow_pickle=False",
    ),
    "no_mpi_dtype": (
        "TypeError",
        "rank 0 of 2 failed: mat_dtype object has no MPI datatype (ranks 0, 1 failed)",
    ),
    "mpilop_columns": (
        "ValueError",
        "the operand's number of columns differs between ranks (every rank must "
        "pass the same): rank 0: 2, rank 1: 3",
    ),
    "pmatmat_columns": (
        "ValueError",
        "the operand's number of columns differs between ranks (every rank must "
        "pass the same): rank 0: 2, rank 1: 3",
    ),
    "user_matmat": ("Boom", "rank 1 of 2 failed: boom on rank 1"),
    "user_rmatmat_lazylinop": (
        "ZeroDivisionError",
        "rank 1 of 2 failed: adjoint failed on rank 1",
    ),
    "local_class": (("RankError", "Local"), "rank 1 of 2 failed: local failure"),
    "wrong_block": (
        "ValueError",
        "rank 1 of 2 failed: this rank's block has shape (3, 2), expected (15, 2)",
    ),
    "gather_blocks": (
        "ValueError",
        "rank 1 of 2 failed: this rank's block has shape (2, 3), expected (2, 2)",
    ),
}

# Failures raised before budgeted's code runs (lazylinop's and scipy's own
# shape checks): the uncaught-exception hook hands them to the waiting rank.
RESCUED = {
    "mpilop_rows": "rank 1 of 2 failed: LazyLinOp matmul: dimension mismatch "
    "((15, 20) incompatible with (19, 2))",
    "pmatmat_rows": "rank 1 of 2 failed: dimension mismatch: (15, 20), (19, 2)",
}


def run_case(tmp_path, case: str):
    """Run one case on 2 ranks: (seconds, {rank: (status or None, output)})."""
    script = tmp_path / "case.py"
    script.write_text(SCRIPT)
    np.savez(tmp_path / "M.npz", np.ones((15, 20)))
    np.savez(tmp_path / "strings.npz", np.full((15, 20), "a"))
    np.savez(tmp_path / "objects.npz", np.full((15, 20), None, dtype=object))
    start = time.monotonic()
    run = subprocess.run(
        [str(MPIEXEC), "-n", "2", "-genv", "DIR", str(tmp_path), "sh", "-c"]
        + [WRAPPER, sys.executable, str(script), case, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.monotonic() - start
    ranks = {}
    for rank in (0, 1):
        status = tmp_path / f"status.{rank}"
        output = tmp_path / f"out.{rank}"
        ranks[rank] = (
            int(status.read_text()) if status.exists() else None,
            output.read_text() if output.exists() else "",
        )
    return seconds, ranks, run


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rank_raises_naming_the_failing_rank(tmp_path, case):
    kinds, says = CASES[case]
    kinds = (kinds, kinds) if isinstance(kinds, str) else kinds
    says = says.format(folder=tmp_path)
    seconds, ranks, run = run_case(tmp_path, case)
    for rank, (status, output) in ranks.items():
        assert status not in (0, None), (rank, output, run.stderr)
        assert f"rank {rank} raised {kinds[rank]}: {says}" in output, (rank, output)
        assert "did not fail" not in output
    assert seconds < 30
    if case == "bad_shape":
        (_, out0), (_, out1) = ranks[0], ranks[1]
        # rank 0 raised it: its own traceback, then the shared exception
        assert "ValueError: shape (15, 21) does not match" in out0
        assert "The above exception was the direct cause" in out0
        # rank 1 shows rank 0's traceback, where the file was read
        assert "_RemoteTraceback" in out1 and "in _read" in out1


@pytest.mark.parametrize("case", sorted(RESCUED))
def test_a_failure_outside_budgeted_reaches_the_waiting_rank(tmp_path, case):
    seconds, ranks, run = run_case(tmp_path, case)
    (status0, out0), (status1, out1) = ranks[0], ranks[1]
    assert status0 != 0 and status1 != 0, (out0, out1, run.stderr)
    assert f"rank 0 raised ValueError: {RESCUED[case]}" in out0, out0
    # rank 1's own exception came from lazylinop or scipy; the hook names it
    assert f"budgeted.linalg: {RESCUED[case]} (shared with every rank)" in out1, out1
    assert seconds < 30


def _mapped_paths() -> set[str]:
    """Files some live process has mapped (from /proc/*/maps)."""
    paths = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:
            continue
        paths.update(line.split(maxsplit=5)[-1] for line in lines if "/" in line)
    return paths


@pytest.fixture
def mpich_segments_removed():
    """MPICH leaves its shared-memory segment in /dev/shm when a job is
    aborted before every rank attached to it (MPICH's file, no PID in its
    name): the new ones that no live process maps are removed after the test."""
    shm = Path("/dev/shm")
    before = set(shm.glob("mpich_shm_*"))
    yield
    new = set(shm.glob("mpich_shm_*")) - before
    if new:
        mapped = _mapped_paths()
        for segment in new - {Path(p) for p in mapped}:
            segment.unlink(missing_ok=True)


def test_a_rank_that_never_arrives_aborts_the_job(tmp_path, mpich_segments_removed):
    seconds, ranks, _ = run_case(tmp_path, "abort")
    assert seconds < 30  # rank 0 would have slept 40 s, then waited forever
    (status0, out0), (status1, out1) = ranks[0], ranks[1]
    assert status0 is None and "did not fail" not in out0  # killed by the abort
    assert status1 not in (0, None)
    assert "rank 1 raised Boom: rank 1 stops early" in out1
    assert "no other rank took the error within 1 s: aborting the job" in out1
