"""Code that builds every registered joblib backend keeps working.

joblib's own ``test_parallel.py`` runs, at import,
``[BACKENDS[name]() for name in BACKENDS]``: once budgeted is imported, that
must work in the parent and in any worker process that imports such a module
to unpickle a function from it. Every scenario runs in a fresh interpreter
(no Dask Client exists there, nothing of the test session leaks in).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: A module as joblib's test module is: it does not import budgeted itself.
JOBLIB_STYLE = """
import os
from joblib.parallel import BACKENDS

ALL_VALID_BACKENDS = [BACKENDS[name]() for name in BACKENDS]
NAMES = sorted(type(b).__name__ for b in ALL_VALID_BACKENDS)


def square(x):
    return x * x, os.getpid(), NAMES
"""

#: A user's module that imports budgeted, then enumerates.
USER_STYLE = "import budgeted  # noqa: F401\n" + JOBLIB_STYLE

SCENARIO = """
import json, os
import budgeted  # noqa: F401
from joblib import Parallel, delayed
import {module} as mod  # enumerates BACKENDS here, in the parent

out = Parallel(n_jobs=2, backend="{backend}")(delayed(mod.square)(i) for i in range(6))
report = dict(
    parent_names=mod.NAMES,
    results=[r for r, _, _ in out],
    worker_names=sorted(
        {{tuple(names) for _, pid, names in out if pid != os.getpid()}}
    ),
    worker_pids=len({{pid for _, pid, _ in out}} - {{os.getpid()}}),
)
print(json.dumps(report))
"""


def _run(code: str, tmp_path: Path, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter with ``tmp_path`` on every path."""
    environ = {**os.environ, "PYTHONPATH": _pythonpath(tmp_path), **env}
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _pythonpath(tmp_path: Path) -> str:
    # Set before the interpreter starts, so the pool's workers inherit it.
    parts = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


@pytest.mark.parametrize(
    "module, backend",
    [("joblib_style", "budgeted"), ("user_style", "budgeted"), ("user_style", "loky")],
)
def test_enumerating_backends_works_in_parent_and_workers(module, backend, tmp_path):
    (tmp_path / "joblib_style.py").write_text(JOBLIB_STYLE)
    (tmp_path / "user_style.py").write_text(USER_STYLE)
    code = SCENARIO.format(module=module, backend=backend)
    report = _run(code, tmp_path)
    assert "BudgetedBackend" in report["parent_names"]
    assert "BudgetedDaskBackend" in report["parent_names"]
    assert report["results"] == [i * i for i in range(6)]
    assert report["worker_pids"] >= 1  # really ran in worker processes
    # Each worker imported the module, budgeted included (unpickling a
    # budgeted batch imports it), and built every backend without error.
    assert report["worker_names"] == [report["parent_names"]]


def test_building_every_backend_has_no_side_effect(tmp_path):
    code = textwrap.dedent("""
        import json, os, threading
        import budgeted
        from joblib.parallel import BACKENDS
        env, threads = dict(os.environ), threading.active_count()
        backends = {name: BACKENDS[name]() for name in BACKENDS}
        from distributed import Client
        try:
            Client.current()
            client = True
        except ValueError:
            client = False
        print(json.dumps(dict(
            env_changed=dict(os.environ) != env,
            new_threads=threading.active_count() - threads,
            client=client,
            dask_type=type(backends["budgeted-dask"]).__name__,
        )))
    """)
    report = _run(code, tmp_path)
    assert report == dict(
        env_changed=False, new_threads=0, client=False, dask_type="BudgetedDaskBackend"
    )


def test_without_dask_every_backend_builds_and_using_dask_names_the_extra(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        sys.modules["distributed"] = None  # as if dask[distributed] were missing
        import budgeted
        from joblib import Parallel, delayed, parallel_config
        from joblib.parallel import BACKENDS
        names = sorted(type(BACKENDS[name]()).__name__ for name in BACKENDS)
        with parallel_config("budgeted-dask"):  # not an error yet
            try:
                Parallel()(delayed(abs)(-1) for _ in range(2))
            except ImportError as exc:
                error = str(exc)
        print(json.dumps(dict(names=names, error=error)))
    """)
    report = _run(code, tmp_path)
    assert "BudgetedBackend" in report["names"]
    assert 'pip install "budgeted[dask]"' in report["error"]
