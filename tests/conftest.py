"""Shared fixtures: probes run inside real workers, barriers, OpenMP loaded."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

import budgeted  # noqa: F401  (registers the backend)
from budgeted.diagnostics import FileBarrier, probe

# Host-wide tokens are on by default. The suite shares a ledger of its own,
# not the user's (another program on the machine would take CPUs from the
# budgets the tests observe); tests of the ledger and jobservers set theirs.
# Workers import this file too when they load a test's function (Dask's
# decide on their ledger from their environment): they keep the suite's.
_SUITE_LEDGER = "BUDGETED_TEST_SUITE_LEDGER"
if os.environ.get(_SUITE_LEDGER) != os.environ.get("BUDGETED_LEDGER"):
    _LEDGER = tempfile.TemporaryDirectory(prefix="budgeted-test-ledger-")
    os.environ["BUDGETED_LEDGER"] = os.environ[_SUITE_LEDGER] = _LEDGER.name
for _name in ("MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS"):  # run under make: ignore it
    os.environ.pop(_name, None)

# Run in the background (``nohup pytest &``, a script's ``&``), the suite
# inherits SIGINT ignored, and so would every program it starts: the tests
# that interrupt a program need Python's own SIGINT handling back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _load_native_pools():
    """Load OpenBLAS and OpenMP in the test process so thread mode sees both."""
    import numpy  # noqa: F401
    import sklearn.utils._openmp_helpers  # noqa: F401


@pytest.fixture
def barrier_factory(tmp_path):
    """Make a FileBarrier for ``n`` tasks in a fresh directory."""
    counter = iter(range(1000))

    def make(parties: int) -> FileBarrier:
        directory = tmp_path / f"barrier{next(counter)}"
        directory.mkdir()
        return FileBarrier(directory, parties, timeout=60)

    return make


def probe_task(barrier=None, _item=None):
    """Task body: load OpenMP, observe, then wait for the others."""
    import sklearn.utils._openmp_helpers  # noqa: F401

    return probe(barrier)


@pytest.fixture
def fresh_lenskit_config(monkeypatch):
    """No LensKit configuration and no LK_NUM_* before; pools and config
    restored after (``budgeted.lenskit`` tests use it for every test)."""
    from threadpoolctl import threadpool_limits

    from budgeted.lenskit.config import ENV_VARS, replace_config

    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    replace_config(None)
    with threadpool_limits(limits=None):  # restores every pool on exit
        yield
