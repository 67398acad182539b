"""Host-wide CPU tokens: share the CPUs with the other programs on this host.

Which source a process uses (:func:`tokens_for_this_process`)::

    BUDGETED_JOBSERVER=0 ? ──no──> MAKEFLAGS / CARGO_MAKEFLAGS / MFLAGS
         │yes                        names a jobserver? ──yes──> JobserverClient
         v                           │no          (unusable: RuntimeWarning, None)
    BUDGETED_LEDGER=off ? <──────────┘
         │no                  yes ──> None (local budgets only)
         v
    HostLedger (BUDGETED_LEDGER=PATH, or the private per-user default)

Under a jobserver the program's first CPU is its own implicit token, as under
make, and every further CPU is a token; in the ledger every CPU is a token.
The modules, one job each:

* :mod:`.makeflags`: parse the make flags (pure);
* :mod:`.source`: what every source shares (counting, giving back, atexit);
* :mod:`.jobserver`: a make jobserver client, pipe and fifo style;
* :mod:`.ledger`: the host ledger of locked files;
* :mod:`.queue`: the waiting threads' turns (fewest CPUs held first);
* :mod:`.bell`: how a ledger waiter sleeps until a token may be free;
* :mod:`.server`: ``python -m budgeted run``, a fifo jobserver for a command;
* :mod:`.lease`: the CPUs one running batch holds (the apply path's part).
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
    "token_spec",
    "JobserverClient",
    "TokenSource",
    "choose_source",
    "release_all_tokens",
    "tokens_for_this_process",
]

JOBSERVER_VAR = "BUDGETED_JOBSERVER"
LEDGER_VAR = "BUDGETED_LEDGER"
_OFF = {"0", "off", "false", "no"}
_chosen: dict[tuple, object] = {}
_NO_JOBSERVER = object()


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
        return HostLedger(n_cpus, folder=setting or None)
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


def tokens_for_this_process(
    n_cpus: int | None = None, jobserver: bool = True, ledger: bool = True
) -> TokenSource | None:
    """This process's token source for ``n_cpus`` planned CPUs, chosen once.

    The jobserver (one per process) does not depend on ``n_cpus``; a ledger
    is sized by it (default: the usable CPUs). ``jobserver=False`` or
    ``ledger=False`` skip that source as ``BUDGETED_JOBSERVER=0`` and
    ``BUDGETED_LEDGER=off`` do.
    """
    environ: Mapping[str, str] = os.environ
    if not jobserver or not ledger:
        environ = dict(os.environ)
        if not jobserver:
            environ[JOBSERVER_VAR] = "0"
        if not ledger:
            environ[LEDGER_VAR] = "off"
    if any(key[0] != os.getpid() for key in _chosen):
        _chosen.clear()  # forked: the parent's sources are not ours
    settings = (os.getpid(), _settings(environ))
    if settings not in _chosen:  # the jobserver, if one is named: once
        named, client = _jobserver(environ)
        _chosen[settings] = client if named else _NO_JOBSERVER
    if _chosen[settings] is not _NO_JOBSERVER:
        return _chosen[settings]
    n_cpus = usable_cpus() if n_cpus is None else n_cpus
    key = (*settings, n_cpus)
    if key not in _chosen:
        _chosen[key] = _ledger(environ, n_cpus)
    return _chosen[key]


def _settings(environ: Mapping[str, str]) -> tuple[str, ...]:
    """What the source choice reads from the environment."""
    names = (JOBSERVER_VAR, LEDGER_VAR, "MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS")
    return tuple(environ.get(name, "") for name in names)


def token_spec(n_cpus: int, jobserver: bool = True, ledger: bool = True):
    """The spec of this program's tokens for a pool planning ``n_cpus``.

    None for local budgets: no source, or a pool started inside a budgeted
    task (the task already holds the CPUs the pool shares).

    Returns
    -------
    budgeted.hostwide.lease.TokenSpec or None
    """
    from ..threadenv import in_task
    from .lease import spec_for

    if in_task():
        return None
    source = tokens_for_this_process(n_cpus, jobserver=jobserver, ledger=ledger)
    return None if source is None else spec_for(source)
