"""Errors agreed across MPI ranks: :func:`agree`, :class:`RankError`, the rescue.

An error on one rank is an error on every rank: each step that can fail on
some ranks only (reading a file, checking an operand, a block's product) runs
in :func:`agree` before the next collective, so that no rank waits forever for
one that raised. An exception that escapes a rank outside those steps (say,
lazylinop's own shape check) is offered, by the uncaught-exception hook, to
the ranks waiting in a step; if none takes it within :data:`RESCUE_SECONDS`,
the hook aborts the job rather than leave it hanging.

Votes travel on a duplicate of the caller's communicator, apart from every
data collective (:mod:`budgeted.linalg.mpi`, :mod:`budgeted.linalg.mpilop`).
"""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from .operators import requires

__all__ = ["RESCUE_SECONDS", "RankError", "agree"]

T = TypeVar("T")

#: How long an exception that escaped one rank waits for the others to take
#: it in an :func:`agree` step before the uncaught-exception hook aborts the job.
RESCUE_SECONDS = 10.0


class RankError(RuntimeError):
    """Another rank failed with an exception that cannot be rebuilt here."""


class _RemoteTraceback(Exception):
    """The failing rank's traceback, chained under the exception other ranks raise."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


_SHARED = "_budgeted_mpi_shared"  # set on exceptions every rank already raises
_state: dict = {"keyval": None, "last": None, "previous_hook": None}


def _agreement_comm(comm):
    """A duplicate of ``comm`` for agreements only, cached on ``comm`` (collective).

    Votes travel apart from the caller's and our own data collectives, so an
    exception offered by the uncaught-exception hook can only meet a vote.
    """
    MPI = requires("mpi4py.MPI", "mpi", "method='mpi'")
    if _state["keyval"] is None:
        _state["keyval"] = MPI.Comm.Create_keyval(
            delete_fn=lambda _comm, _keyval, dup: dup.Free()
        )
    dup = comm.Get_attr(_state["keyval"])
    if dup is None:
        dup = comm.Dup()
        comm.Set_attr(_state["keyval"], dup)
    _state["last"] = dup
    if _state["previous_hook"] is None:
        _state["previous_hook"] = sys.excepthook
        sys.excepthook = _excepthook
    return dup


def _vote(dup, failed: bool, same: int = 0) -> tuple[bool, bool]:
    """(did any rank fail, do the ranks' ``same`` values differ)."""
    from mpi4py import MPI

    mine = np.array([int(failed), same, -same], dtype=np.int64)
    out = np.empty_like(mine)
    # Nonblocking, so that the exception hook's Iallreduce (which may give up)
    # matches it: blocking and nonblocking collectives never match each other.
    dup.Iallreduce(mine, out, op=MPI.MAX).Wait()
    return bool(out[0]), bool(out[1] != -out[2])


def _describe(exc: BaseException) -> dict:
    try:
        kind = pickle.dumps(type(exc))
    except Exception:  # a class defined in a function, say
        kind = None
    return {
        "type": kind,
        "name": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _rebuild(cls, message: str) -> Exception:
    """An exception of the failing rank's type, else a :class:`RankError`.

    ``cls`` is the class itself on the failing rank, pickled elsewhere.
    """
    try:
        if isinstance(cls, bytes):
            cls = pickle.loads(cls)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # not importable here, or needs other arguments
        pass
    return RankError(message)


def _shared_error(failures: list, size: int, mine: Exception | None) -> Exception:
    """The exception every rank raises: the lowest failing rank's, named.

    ``mine`` is this rank's own exception if it is that lowest failing rank.
    """
    rank, first = failures[0]
    message = f"rank {rank} of {size} failed: {first['message']}"
    if len(failures) > 1:
        message += f" (ranks {', '.join(str(r) for r, _ in failures)} failed)"
    exc = _rebuild(type(mine) if mine is not None else first["type"], message)
    if isinstance(exc, RankError):
        exc.args = (f"{message} [{first['name']}]",)
    setattr(exc, _SHARED, True)
    return exc


def _exchange(dup, error: BaseException | None) -> list:
    """Every rank's error description (after a vote found one): [(rank, dict)]."""
    mine = None if error is None else _describe(error)
    return [(r, d) for r, d in enumerate(dup.allgather(mine)) if d is not None]


def agree(comm, step: Callable[[], T], *, same: int = 0, what: str = "a value") -> T:
    """Run ``step()`` on this rank; if it raised on any rank, raise on every rank.

    Put it right before a collective that a failing rank would never reach.
    On success it costs one small nonblocking allreduce.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        Every rank of ``comm`` must call ``agree`` here.
    step : callable
        This rank's local work; it must not communicate.
    same : int, default=0
        A value every rank must have (say, the operand's columns).
    what : str
        What ``same`` is, for the error message.

    Returns
    -------
    object
        What ``step()`` returned.

    Raises
    ------
    Exception
        On every rank, when ``step`` raised on some: an exception of the lowest
        failing rank's type (a :class:`RankError` if it cannot be rebuilt)
        saying ``"rank r of K failed: <its message>"``. The failing rank chains
        its own exception; the others chain its traceback.
    ValueError
        On every rank, when ``same`` differs between ranks.
    """
    dup = _agreement_comm(comm)
    try:
        result, error = step(), None
    except Exception as exc:
        result, error = None, exc
    failed, differ = _vote(dup, error is not None, same)
    if failed:
        failures = _exchange(dup, error)
        mine = error if failures[0][0] == dup.Get_rank() else None
        shared = _shared_error(failures, dup.Get_size(), mine)
        cause = error or _RemoteTraceback(failures[0][1]["traceback"])
        raise shared from cause
    if differ:
        values = dup.allgather(same)
        raise ValueError(
            f"{what} differs between ranks (every rank must pass the same): "
            + ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        )
    return result


def _already_shared(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, _SHARED, False):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _offer(dup, exc: BaseException) -> bool:
    """Give ``exc`` to the ranks waiting in a vote; False if none came in time."""
    from mpi4py import MPI

    mine = np.array([1, 0, 0], dtype=np.int64)
    request = dup.Iallreduce(mine, np.empty_like(mine), op=MPI.MAX)
    deadline = time.monotonic() + RESCUE_SECONDS
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    _exchange(dup, exc)
    return True


def _excepthook(exc_type, exc, tb) -> None:
    """Share an exception that escaped this rank outside :func:`agree`."""
    from mpi4py import MPI

    previous = _state["previous_hook"] or sys.__excepthook__
    dup = _state["last"]
    if (
        dup is None
        or not isinstance(exc, Exception)
        or _already_shared(exc)
        or MPI.Is_finalized()
        or dup == MPI.COMM_NULL  # freed with the caller's communicator
        or dup.Get_size() < 2
    ):
        previous(exc_type, exc, tb)
        return
    joined = _offer(dup, exc)
    previous(exc_type, exc, tb)
    rank, size = dup.Get_rank(), dup.Get_size()
    if joined:
        print(
            f"budgeted.linalg: rank {rank} of {size} failed: {exc} "
            "(shared with every rank)",
            file=sys.stderr,
            flush=True,
        )
        return
    print(
        f"budgeted.linalg: rank {rank} of {size} failed: {exc}; no other rank "
        f"took the error within {RESCUE_SECONDS:g} s: aborting the job so that "
        "none waits forever",
        file=sys.stderr,
        flush=True,
    )
    dup.Abort(1)
