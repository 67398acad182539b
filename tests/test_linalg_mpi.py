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
