"""pmatmat and MPILop under MPI, with no thread variable set by hand.

Run with::

    mpiexec -n 2 python examples/mpi_pmatmat.py [output.npz]

Every rank builds the same operator and operand; each rank computes its
column block under its share of the node's CPUs; rank 0 gets the results
(the other ranks get None). With an output path, rank 0 saves each result
and its reference for a test to compare.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.sparse.linalg import LinearOperator
from threadpoolctl import threadpool_info

from budgeted.linalg import MPILop, pmatmat

rng = np.random.default_rng(0)
results = {}

# pmatmat: L on every rank, A on every rank; dtype kept, complex works.
for dtype in (np.float32, np.float64, np.complex128):
    M = rng.random((60, 50)).astype(dtype)
    A = rng.random((50, 7)).astype(dtype)
    for use_matvec in (False, True):
        P = pmatmat(M, method="mpi", use_matvec=use_matvec)
        name = f"{np.dtype(dtype).name}_matvec{int(use_matvec)}"
        results[name] = (P @ A, M @ A)
        results[name + "_H"] = (P.H @ M, M.conj().T @ M)
P = pmatmat(M, method="mpi")
results["vector"] = (P @ A[:, 0], M @ A[:, 0])

# MPILop: rank 0 reads the file and scatters row blocks.
comm = P.engine.comm
npz = Path(comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None)) / "M.npz"
if comm.rank == 0:
    np.savez(npz, M)
comm.Barrier()
op = MPILop(M.shape, npz, M.dtype)
X = A if P.engine.rank == 0 else np.empty_like(A)  # only rank 0's values count
results["mpilop"] = (op @ X, M @ A)
Y = M @ A if P.engine.rank == 0 else np.empty((60, 7), M.dtype)
results["mpilop_H"] = (op.H @ Y, M.conj().T @ (M @ A))

# Budgets: with 3 CPUs for the node, its 2 ranks get 2 and 1 BLAS threads.
seen = []


def traced(X):
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    seen.append(blas[0]["num_threads"])  # what BLAS has now
    return M @ X


L = LinearOperator(M.shape, matvec=traced, matmat=traced, dtype=M.dtype)
P = pmatmat(L, method="mpi", n_cpus=3)
P @ A
budgets = P.engine.comm.gather((seen[-1], P.engine.budget))

if P.engine.rank == 0:
    for name, (got, want) in results.items():
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert np.allclose(got, want), name
    assert budgets == [(2, 2), (1, 1)], budgets
    print(f"rank 0: {len(results)} products match; (BLAS threads, budget): {budgets}")
    if len(sys.argv) > 1:
        arrays = {f"{k}_got": v[0] for k, v in results.items()}
        arrays.update({f"{k}_want": v[1] for k, v in results.items()})
        np.savez(sys.argv[1], **arrays)
else:
    assert all(got is None for got, _ in results.values())
