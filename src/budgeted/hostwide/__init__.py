"""Host-wide CPU tokens: share the CPUs with the other programs on this host.

Which source a process uses (:func:`tokens_for_this_process`)::

    BUDGETED_JOBSERVER=0 ? ──no──> MAKEFLAGS / CARGO_MAKEFLAGS / MFLAGS
         │yes                        names a jobserver? ──yes──> JobserverClient
         v                           │no          (unusable: RuntimeWarning, None)
    BUDGETED_LEDGER=off ? <──────────┘
         │no                  yes ──> None (local budgets only)
         v
    HostLedger (BUDGETED_LEDGER=PATH, or the private per-user default)

Every source hands out *extra* tokens: the program's first CPU is its own
implicit token, as under make. The modules, one job each:

* :mod:`.makeflags`: parse the make flags (pure);
* :mod:`.source`: what every source shares (counting, giving back, atexit);
* :mod:`.jobserver`: a make jobserver client, pipe and fifo style;
* :mod:`.ledger`: the host ledger of locked files;
* :mod:`.server`: ``python -m budgeted run``, a fifo jobserver for a command.

The backend does not take tokens per batch yet: that is being wired next.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

from ..cpus import usable_cpus
from .jobserver import JobserverClient, JobserverUnusable
from .ledger import HostLedger, LedgerUnusable
from .makeflags import JobserverAuth, find_jobserver
from .source import TokenSource, release_all_tokens

__all__ = [
    "HostLedger",
    "JobserverClient",
    "TokenSource",
    "choose_source",
    "release_all_tokens",
    "tokens_for_this_process",
]

JOBSERVER_VAR = "BUDGETED_JOBSERVER"
LEDGER_VAR = "BUDGETED_LEDGER"
_OFF = {"0", "off", "false", "no"}
_chosen: dict[int, TokenSource | None] = {}


def _jobserver(environ: Mapping[str, str]) -> tuple[bool, TokenSource | None]:
    """(named, client): whether a jobserver is named, and its client."""
    if environ.get(JOBSERVER_VAR, "").strip().lower() in _OFF:
        return False, None
    try:
        auth: JobserverAuth | None = find_jobserver(environ)
        return auth is not None, None if auth is None else JobserverClient(auth)
    except (ValueError, JobserverUnusable) as exc:
        warnings.warn(f"{exc}; using local budgets", RuntimeWarning, stacklevel=3)
        return True, None


def _ledger(environ: Mapping[str, str], n_cpus: int | None) -> TokenSource | None:
    setting = environ.get(LEDGER_VAR, "").strip()
    if setting.lower() in _OFF:
        return None
    n_cpus = usable_cpus() if n_cpus is None else n_cpus
    try:
        return HostLedger(n_cpus - 1, folder=setting or None)
    except (LedgerUnusable, OSError) as exc:
        warnings.warn(
            f"{LEDGER_VAR}: {exc}; using local budgets", RuntimeWarning, stacklevel=3
        )
        return None


def choose_source(
    environ: Mapping[str, str] | None = None, n_cpus: int | None = None
) -> TokenSource | None:
    """A new token source for ``environ`` (default ``os.environ``), or None.

    A jobserver named in the make flags wins; one that cannot be used gives
    a :class:`RuntimeWarning` and None (local budgets), never the ledger.
    ``n_cpus`` (default: the usable CPUs) sizes the ledger.
    """
    environ = os.environ if environ is None else environ
    named, client = _jobserver(environ)
    if named:
        return client
    return _ledger(environ, n_cpus)


def tokens_for_this_process() -> TokenSource | None:
    """This process's token source, chosen once (again after a fork)."""
    pid = os.getpid()
    if pid not in _chosen:
        _chosen.clear()
        _chosen[pid] = choose_source()
    return _chosen[pid]
