"""When a call fails: clear errors that keep loky's words first.

* A worker killed mid-task: loky's ``TerminatedWorkerError`` is re-raised
  with loky's message first, then the tasks of the batch that was lost.
* A task that cannot be pickled: loky's ``PicklingError`` message first, then
  the function or argument (position or keyword) that failed.

Code that matches loky's messages therefore matches ours.
"""

from __future__ import annotations

import pickle

import cloudpickle

from . import _compat

__all__ = ["describe_batch", "explain_failure"]

_MAX_SHOWN = 3


def _task_name(func) -> str:
    func = getattr(func, "func", func)  # functools.partial
    return getattr(func, "__qualname__", None) or type(func).__name__


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_batch(batch) -> str:
    """A short text naming the tasks of a joblib batch, e.g. ``f(1, 'a')``."""
    items = getattr(batch, "items", None)
    if not items:
        return _task_name(batch)
    shown = []
    for func, args, kwargs in items[:_MAX_SHOWN]:
        params = [_short(a) for a in args]
        params += [f"{k}={_short(v)}" for k, v in kwargs.items()]
        shown.append(f"{_task_name(func)}({', '.join(params)})")
    more = len(items) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _unpicklable_part(batch) -> str | None:
    """Which part of a batch cannot be pickled, as text; None if all can."""
    for func, args, kwargs in getattr(batch, "items", ()):
        name = _task_name(func)
        parts = [(f"the function {name}", func)]
        parts += [(f"argument {i} of {name}", a) for i, a in enumerate(args)]
        parts += [(f"argument {k!r} of {name}", v) for k, v in kwargs.items()]
        for label, value in parts:
            try:
                cloudpickle.dumps(value)
            except Exception as exc:  # noqa: BLE001 - any pickling failure
                return f"{label} ({type(value).__name__}: {exc})"
    return None


def explain_failure(exc: BaseException, batch) -> BaseException | None:
    """A clearer exception for ``exc`` raised by ``batch``, or None to keep it.

    Same type as ``exc``, and ``exc``'s own (loky's) message comes first.
    """
    if isinstance(exc, _compat.TerminatedWorkerError):
        return _compat.TerminatedWorkerError(
            f"{exc}\nA batch this call lost: {describe_batch(batch)}; the"
            " pool is restarted for the next call."
        )
    if isinstance(exc, pickle.PicklingError):
        part = _unpicklable_part(batch)
        if part is not None:
            return pickle.PicklingError(f"{exc} The cause: {part} cannot be pickled.")
    return None
