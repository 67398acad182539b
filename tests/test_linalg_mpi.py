"""pmatmat(method="mpi") and MPILop under a real ``mpiexec -n 2`` run.

One launch (each costs seconds): the example script checks every product on
rank 0 and saves them; this test compares them again here, dtype included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mpi_pmatmat.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.fixture(scope="module")
def mpi_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / "results.npz"
    run = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, str(EXAMPLE), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}, run.stdout


PRODUCTS = [
    f"{dtype}_matvec{m}{h}"
    for dtype in ("float32", "float64", "complex128")
    for m in (0, 1)
    for h in ("", "_H")
]


@pytest.mark.parametrize("name", [*PRODUCTS, "vector", "mpilop", "mpilop_H"])
def test_rank0_gets_the_product_with_its_dtype(mpi_results, name):
    results, _ = mpi_results
    got, want = results[f"{name}_got"], results[f"{name}_want"]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4 if "float32" in name else 1e-7)


def test_float32_is_not_upcast_and_complex_works(mpi_results):
    results, _ = mpi_results
    assert results["float32_matvec0_got"].dtype == np.float32
    assert results["complex128_matvec1_got"].dtype == np.complex128


def test_each_rank_ran_under_its_share_of_the_node(mpi_results):
    # the script planned 3 CPUs for the node: rank 0 gets 2 threads, rank 1 gets 1,
    # read back from threadpoolctl inside each rank's product
    _, stdout = mpi_results
    assert "(BLAS threads, budget): [(2, 2), (1, 1)]" in stdout


EDGES = """
import sys
import numpy as np
from mpi4py import MPI
from scipy.sparse.linalg import LinearOperator
from budgeted.linalg import MPILop, pmatmat
from budgeted.linalg.mpi import gather_blocks

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
M = np.arange(12.0).reshape(3, 4)
checks = {}

# one column over two ranks: rank 1 has no block
P = pmatmat(M, method="mpi")
checks["one_column"] = (P @ np.ones((4, 1)), M @ np.ones((4, 1)))

# blocks of different dtypes (rank 0 float32, rank 1 float64): pickled, upcast
local = np.full((2, 1 + rank), rank, dtype=np.float32 if rank == 0 else np.float64)
whole = gather_blocks(comm, local, [1, 2], 2, axis=1)
checks["mixed_dtypes"] = (whole, np.array([[0, 1, 1], [0, 1, 1]], dtype=np.float64))

# the root can be another rank
P1 = pmatmat(M, method="mpi", root=1)
got = P1 @ np.eye(4)
assert (got is None) == (rank == 0)
if rank == 1:
    comm.send(got, dest=0)
elif rank == 0:
    checks["root_1"] = (comm.recv(source=1), M)

# MPILop: one row for two ranks (rank 1 holds none), every rank has X itself
if rank == 0:
    np.savez(sys.argv[2], M[:1])
comm.Barrier()
op = MPILop((1, 4), sys.argv[2], np.float64, bcast_op=False)
X = np.arange(8.0).reshape(4, 2)
checks["mpilop_one_row"] = (op @ X, M[:1] @ X)
checks["mpilop_one_row_H"] = (op.H @ np.ones((1, 2)), M[:1].T @ np.ones((1, 2)))

if rank == 0:
    for name, (got, want) in checks.items():
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert np.allclose(got, want), (name, got, want)
    open(sys.argv[1], "w").write(",".join(sorted(checks)))
"""


def test_edge_cases_empty_blocks_mixed_dtypes_other_root(tmp_path):
    script = tmp_path / "edges.py"
    script.write_text(EDGES)
    done = tmp_path / "done.txt"
    run = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, str(script), str(done)]
        + [str(tmp_path / "M.npz")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert done.read_text().split(",") == sorted(
        ["one_column", "mixed_dtypes", "root_1", "mpilop_one_row", "mpilop_one_row_H"]
    )
