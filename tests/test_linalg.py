"""pmatmat: products, dtypes, operator kinds, budgets seen inside workers,
L sent once, workers and files released (thread and process methods)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import cloudpickle
import lazylinop
import numpy as np
import psutil
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from threadpoolctl import threadpool_info

from budgeted.linalg import column_blocks, pmatmat
from budgeted.linalg.shm import PREFIX

# Worker processes rebuild this module's operators by value, not by import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DTYPES = [np.float32, np.float64, np.complex128]
SHAPE = (60, 50)


def matrix(dtype, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.random(shape)
    if np.issubdtype(dtype, np.complexfloating):
        M = M + 1j * rng.random(shape)
    return M.astype(dtype)


def shm_files() -> set[Path]:
    """This process's pmatmat files now present (another program on the
    machine, e.g. a second test run, has files of its own)."""
    return set(Path("/dev/shm").glob(f"{PREFIX}{os.getpid()}-*"))


def tolerance(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {}


# -- column blocks (pure) -----------------------------------------------------
@pytest.mark.parametrize("n, k", [(7, 3), (64, 8), (1, 8), (0, 3), (10, 1), (5, 5)])
def test_column_blocks_cover_contiguously_remainder_first(n, k):
    blocks = column_blocks(n, k)
    assert len(blocks) == min(n, k)
    sizes = [n // k + (i < n % k) for i in range(len(blocks))]  # remainder first
    assert [b - a for a, b in blocks] == sizes
    assert all(b > a for a, b in blocks)  # never empty
    flat = [j for a, b in blocks for j in range(a, b)]
    assert flat == list(range(n))


@pytest.mark.parametrize("bad", [(-1, 2), (3, 0), (2.5, 2), (3, "2"), (True, 2)])
def test_column_blocks_reject_bad_input(bad):
    with pytest.raises(ValueError, match="n_columns|nworkers"):
        column_blocks(*bad)


@pytest.mark.parametrize("bad", [0, -2, 2.5, "2", True])
def test_pmatmat_rejects_bad_nworkers_as_column_blocks_does(bad):
    with pytest.raises(
        ValueError, match=f"^nworkers must be a positive integer, got {bad!r}$"
    ):
        pmatmat(np.eye(3), nworkers=bad)


def test_mpi_module_still_exports_the_agreement():
    """agree, RankError and RESCUE_SECONDS live in linalg.agreement now."""
    from budgeted.linalg import agreement, mpi

    assert mpi.agree is agreement.agree and mpi.RankError is agreement.RankError
    assert mpi.RESCUE_SECONDS == agreement.RESCUE_SECONDS == 10.0
    assert {"agree", "RankError", "RESCUE_SECONDS"} <= set(mpi.__all__)


# -- products -----------------------------------------------------------------
@pytest.fixture(scope="module")
def process_operators():
    """One process-mode P per (dtype, nworkers), reused for every column count."""
    made = {}

    def get(dtype, nworkers):
        key = (np.dtype(dtype).name, nworkers)
        if key not in made:
            made[key] = pmatmat(matrix(dtype), method="process", nworkers=nworkers)
        return made[key]

    yield get
    for P in made.values():
        P.close()


def operator_for(method, dtype, nworkers, process_operators):
    if method == "process":
        return process_operators(dtype, nworkers)
    return pmatmat(matrix(dtype), method=method, nworkers=nworkers)


@pytest.mark.parametrize("nworkers", [1, 3, 8])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["thread", "process"])
def test_products_equal_dense_for_every_column_count(
    method, dtype, nworkers, process_operators
):
    M = matrix(dtype)
    P = operator_for(method, dtype, nworkers, process_operators)
    for ncols in (1, 7, 64):
        A = matrix(dtype, (50, ncols), seed=ncols)
        B = matrix(dtype, (60, ncols), seed=ncols + 1)
        got, got_h = P @ A, P.H @ B
        assert got.dtype == (M @ A).dtype and got.shape == (60, ncols)
        np.testing.assert_allclose(got, M @ A, **tolerance(dtype))
        assert got_h.dtype == (M.conj().T @ B).dtype
        np.testing.assert_allclose(got_h, M.conj().T @ B, **tolerance(dtype))
    v = A[:, 0]
    assert (P @ v).shape == (60,)
    np.testing.assert_allclose(P @ v, M @ v, **tolerance(dtype))


def operator_kinds():
    M = matrix(np.float64)
    S = sp.random(60, 50, density=0.1, format="csr", random_state=0)
    return {
        "ndarray": (M, M),
        "csr_matrix": (S, S.toarray()),
        "csr_array": (sp.csr_array(S), S.toarray()),
        "LinearOperator": (aslinearoperator(M), M),
        "LazyLinOp": (lazylinop.aslazylinop(M), M),
    }


@pytest.mark.parametrize("method", ["thread", "process"])
@pytest.mark.parametrize("kind", list(operator_kinds()))
def test_every_operator_kind(method, kind):
    """Process workers start with "spawn": a LazyLinOp (full of lambdas) too."""
    L, dense = operator_kinds()[kind]
    A = matrix(np.float64, (50, 9), seed=3)
    options = {"context": "spawn"} if method == "process" else {}
    with pmatmat(L, method=method, nworkers=2, **options) as P:
        expected = lazylinop.LazyLinOp if kind == "LazyLinOp" else LinearOperator
        assert isinstance(P, expected)
        np.testing.assert_allclose(P @ A, dense @ A)
        np.testing.assert_allclose(P.H @ (dense @ A), dense.T @ (dense @ A))
        if kind == "LazyLinOp":  # P stays a LazyLinOp: composition, toarray
            np.testing.assert_allclose((P.H @ P) @ A, dense.T @ dense @ A)
            np.testing.assert_allclose(P.toarray(), dense)


class Misdeclared(LinearOperator):
    """Says float32, computes in float64: the result must still be float64."""

    def __init__(self, M):
        super().__init__(np.dtype(np.float32), M.shape)
        self.M = M

    def _matmat(self, X):
        return self.M @ X

    def _rmatmat(self, X):
        return self.M.T @ X

    def _matvec(self, x):
        return self.M @ x


def test_result_dtype_found_for_a_lazylinop_without_dtype():
    M = matrix(np.float64)
    L = lazylinop.aslazylinop(M)  # a LazyLinOp has no dtype: P must find out
    A32 = matrix(np.float32, (50, 5))
    with pmatmat(L, nworkers=2) as P:
        for _ in range(2):  # the first product learns, the second reuses
            got = P @ A32
            assert got.dtype == (L @ A32).dtype == np.float64
            np.testing.assert_allclose(got, M @ A32)
    M32 = matrix(np.float32)
    with pmatmat(lazylinop.aslazylinop(M32), nworkers=2) as P:
        assert (P @ A32).dtype == np.float32


@pytest.mark.parametrize("method", ["thread", "process"])
def test_result_dtype_is_what_L_gives_even_if_L_misdeclares_it(method):
    M = matrix(np.float64)
    A32 = matrix(np.float32, (50, 5))
    with pmatmat(Misdeclared(M), method=method, nworkers=2) as P:
        for _ in range(2):  # the first product learns, the second reuses
            got = P @ A32
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, M @ A32)


class MatvecOnly(LinearOperator):
    """Refuses whole-matrix products: only matvec works."""

    def __init__(self, M):
        super().__init__(M.dtype, M.shape)
        self.M = M

    def _matvec(self, x):
        return self.M @ x

    def _rmatvec(self, x):
        return self.M.conj().T @ x

    def _matmat(self, X):
        raise RuntimeError("matmat called")


@pytest.mark.parametrize("method", ["thread", "process"])
def test_use_matvec_goes_column_by_column(method):
    M = matrix(np.complex128)
    A = matrix(np.complex128, (50, 7), seed=2)
    with pmatmat(MatvecOnly(M), method=method, nworkers=3, use_matvec=True) as P:
        np.testing.assert_allclose(P @ A, M @ A)
        np.testing.assert_allclose(P.H @ (M @ A), M.conj().T @ (M @ A))
        with pytest.raises(TypeError):  # a product that fails
            P @ np.full((50, 4), "x", dtype=object)
        np.testing.assert_allclose(P @ A, M @ A)  # P is still usable


def test_without_use_matvec_blocks_use_matmat():
    with (
        pmatmat(MatvecOnly(matrix(np.float64)), nworkers=3) as P,
        pytest.raises(RuntimeError, match="matmat called"),
    ):
        P @ np.ones((50, 7))


# -- budgets, observed where the block is computed -----------------------------
class Observer(LinearOperator):
    """Each result column holds what its worker saw: BLAS, OpenMP, pid, tid.

    The operand names two barriers (row 0: their number, row 1: how many
    blocks), so every block observes while all of the product's blocks run.
    """

    def __init__(self, barriers: Path, openmp: bool = True, n=50):
        super().__init__(np.dtype(np.float64), (4, n))
        self.barriers, self.openmp = str(barriers), openmp

    def _matmat(self, X):
        from budgeted.diagnostics import FileBarrier

        if self.openmp:  # scikit-learn loads OpenMP (slow to import in a worker)
            import sklearn.utils._openmp_helpers  # noqa: F401

        directory, parties = Path(self.barriers) / str(int(X[0, 0])), int(X[1, 0])
        FileBarrier(directory / "in", parties, timeout=60).wait()
        pools = {p["user_api"]: p["num_threads"] for p in threadpool_info()}
        seen = [pools["blas"], pools.get("openmp", 0), os.getpid(), _thread_id()]
        # nobody finishes (and frees its share) before every block has looked
        FileBarrier(directory / "out", parties, timeout=60).wait()
        return np.tile(np.array(seen, dtype=np.float64)[:, None], (1, X.shape[1]))

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1))


def _thread_id():
    import threading

    return threading.get_native_id()


def observe(P, ncols, nworkers=3):
    """What each block saw, in block order."""
    blocks = column_blocks(ncols, nworkers)
    number = len(list(Path(P.engine.sides.L.barriers).iterdir()))
    for phase in ("in", "out"):
        (Path(P.engine.sides.L.barriers) / str(number) / phase).mkdir(parents=True)
    X = np.zeros((50, ncols))
    X[0], X[1] = number, len(blocks)
    seen = P @ X
    return [tuple(int(v) for v in seen[:, start]) for start, _ in blocks]


@pytest.mark.parametrize("method", ["thread", "process"])
def test_workers_see_their_budget(method, tmp_path):
    with pmatmat(Observer(tmp_path), method=method, nworkers=3, n_cpus=6) as P:
        # 7 columns, 3 workers: each computes under 6 // 3 = 2 threads
        seen = observe(P, 7)
        assert [(blas, omp) for blas, omp, _, _ in seen] == [(2, 2)] * 3
        assert len({(pid, tid) for _, _, pid, tid in seen}) == 3
        if method == "process":
            assert os.getpid() not in {pid for _, _, pid, _ in seen}
        # 2 columns: 2 blocks share the 6 CPUs; 1 column: one block gets all 6
        assert [(b, o) for b, o, _, _ in observe(P, 2)] == [(3, 3)] * 2
        assert [(b, o) for b, o, _, _ in observe(P, 1)] == [(6, 6)]


def test_thread_method_restores_the_callers_pools(tmp_path):
    before = {p["user_api"]: p["num_threads"] for p in threadpool_info()}
    with pmatmat(Observer(tmp_path), method="thread", nworkers=3, n_cpus=6) as P:
        observe(P, 7)
        observe(P, 1)
    assert {p["user_api"]: p["num_threads"] for p in threadpool_info()} == before


# -- process method: L once, start methods, release ------------------------------
def _count_unpickle(log, barriers):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return CountedObserver(log, barriers)


class CountedObserver(Observer):
    """An Observer that appends its pid to a file each time it is unpickled."""

    def __init__(self, log, barriers):
        super().__init__(barriers, openmp=False)
        self.log = str(log)

    def __reduce__(self):
        return _count_unpickle, (self.log, self.barriers)


def worker_pids(P, ncols=7):
    return {pid for _, _, pid, _ in observe(P, ncols)}


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_L_sent_once_per_worker_and_everything_released(tmp_path, context):
    before = shm_files()
    log, barriers = tmp_path / "unpickled.txt", tmp_path / "barriers"
    barriers.mkdir()
    L = CountedObserver(log, barriers)
    P = pmatmat(L, method="process", nworkers=3, context=context)
    workers = worker_pids(P)  # the barrier makes 3 workers take one block each
    for ncols in (64, 1, 30, 7):
        assert worker_pids(P, ncols) <= workers
    unpickled_in = [int(pid) for pid in log.read_text().split()]
    assert sorted(unpickled_in) == sorted(workers)  # once in each, never again
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert workers <= children and os.getpid() not in workers
    assert len(shm_files() - before) == 1  # the operand file
    processes = [psutil.Process(pid) for pid in workers]
    P.close()
    P.close()  # idempotent
    _, alive = psutil.wait_procs(processes, 30)
    assert not alive
    assert not workers & {c.pid for c in psutil.Process().children(recursive=True)}
    assert shm_files() - before == set()
    with pytest.raises(ValueError, match="closed"):
        P @ np.zeros((50, 2))


def test_garbage_collection_releases_workers_and_files(tmp_path):
    before = shm_files()
    P = pmatmat(Observer(tmp_path, openmp=False), method="process", nworkers=2)
    workers = [psutil.Process(pid) for pid in worker_pids(P, 2)]
    assert len(workers) == 2 and shm_files() - before
    del P
    gc.collect()
    _, alive = psutil.wait_procs(workers, 30)
    assert not alive
    assert shm_files() - before == set()


def test_results_outlive_the_operator_and_own_their_memory():
    before = shm_files()
    M = matrix(np.float64)
    A1, A2 = matrix(np.float64, (50, 3), seed=1), matrix(np.float64, (50, 3), seed=2)
    with pmatmat(M, method="process", nworkers=2) as P:
        first, second = P @ A1, P @ A2
    np.testing.assert_allclose(first, M @ A1)
    np.testing.assert_allclose(second, M @ A2)
    first[:] = 0  # writable, and not shared with the second result
    np.testing.assert_allclose(second, M @ A2)
    assert shm_files() - before == set()


def test_files_left_by_a_killed_parent_are_removed_by_the_next_one():
    code = (
        "import os, signal, numpy as np\n"
        "from budgeted.linalg import pmatmat\n"
        "P = pmatmat(np.eye(4), method='process', nworkers=1)\n"
        "P @ np.ones((4, 2))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.Popen([sys.executable, "-c", code])
    assert killed.wait(timeout=120) == -signal.SIGKILL
    left = list(Path("/dev/shm").glob(f"{PREFIX}{killed.pid}-*"))
    assert left  # the operand file of the killed parent
    # its loky pool's semaphores, unless its resource tracker removed them
    # already when it saw its program gone
    semaphores = list(Path("/dev/shm").glob(f"sem.loky-{killed.pid}-*"))
    with pmatmat(np.eye(4), method="process", nworkers=1) as P:
        P @ np.ones((4, 2))
        assert not any(p.exists() for p in left + semaphores)


# -- bad input ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "fork"}, ValueError, "method.*'fork'"),
        ({"nworkers": 0}, ValueError, "nworkers.*0"),
        ({"nworkers": 2.5}, ValueError, "nworkers.*2.5"),
        ({"n_cpus": 0}, ValueError, "n_cpus.*0"),
        ({"colour": "red"}, TypeError, "colour"),
        ({"method": "process", "context": "fork"}, ValueError, "context.*fork"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        pmatmat(matrix(np.float64), **kwargs)


def test_bad_operator_and_operand_leave_P_usable():
    with pytest.raises(TypeError, match="L must be a 2-D operator.*str"):
        pmatmat("not an operator")
    M = matrix(np.float64)
    P = pmatmat(M, nworkers=2)
    with pytest.raises(ValueError, match="dimension mismatch"):
        P @ np.ones((49, 3))
    with pytest.raises(TypeError, match="sparse"):  # scipy rewords ours
        P @ sp.random(50, 3, density=0.5, format="csr")
    PL = pmatmat(lazylinop.aslazylinop(M), nworkers=2)
    with pytest.raises(TypeError, match="dense operand"):
        PL @ sp.random(50, 3, density=0.5, format="csr")
    np.testing.assert_allclose(P @ np.ones((50, 3)), M @ np.ones((50, 3)))


def test_import_budgeted_stays_light_and_missing_extras_are_named():
    code = (
        "import sys, budgeted\n"
        "heavy = [m for m in ('budgeted.linalg', 'scipy', 'lazylinop', 'mpi4py')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "sys.modules['mpi4py'] = None\n"
        "import numpy as np\n"
        "from budgeted.linalg import pmatmat\n"
        "try:\n"
        "    pmatmat(np.eye(3), method='mpi')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert 'pip install "budgeted[mpi]"' in out.stdout
