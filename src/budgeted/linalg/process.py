"""Column blocks on budgeted worker processes that keep ``L``.

::

    parent (ProcessEngine)                    worker (budgeted_executor)
    ──────────────────────                    ──────────────────────────
    budgeted_executor(initargs=(pickled,)) ─> _keep: L unpickled once
    X copied into the input arena file
    result file created (empty)
    submit(_run_block, specs, start, stop) ─> map both files (input cached)
                                              block = side @ X[:, start:stop]
                                              written into the result file
    result file unlinked; its mapping  <────  (a block of another dtype is
    becomes the returned array                 returned instead)

Only file paths, shapes and dtypes travel through pickles. Each worker runs
under its share of the CPUs (:func:`~budgeted.pool.budgeted_executor`); when
a product has fewer blocks than workers, each block gets the pool plan's
share for that many running tasks (``plan.shares``), so one column still uses
every CPU.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref

import cloudpickle
import numpy as np

from ..apply import run_with_budget
from ..threadenv import current_budget
from .blocks import column_blocks
from .engines import OperatorSides
from .shm import ArraySpec, InputArena, create_array, open_array, unlink, view_array

__all__ = ["ProcessEngine"]


class ProcessEngine:
    """Products computed by worker processes that received ``L`` once.

    Parameters
    ----------
    sides : OperatorSides
        ``L`` (sent once to each worker) and the parent's dtype guesses.
    nworkers : int
        Worker processes.
    n_cpus : int, optional
        CPUs to split over them (default: the budget in force here).
    context : {"loky", "spawn", "forkserver"}
        How workers start (never ``fork``).
    """

    gets_result = True

    def __init__(
        self, sides: OperatorSides, nworkers: int, n_cpus=None, context="loky"
    ):
        from ..pool import budgeted_executor

        self.sides = sides
        self.nworkers = nworkers
        self.n_cpus = current_budget() if n_cpus is None else n_cpus
        self._arena = InputArena()
        self._lock = threading.Lock()
        self._executor = budgeted_executor(
            nworkers,
            n_cpus=self.n_cpus,
            initializer=_keep,
            # cloudpickle, once: lambdas in L must survive "spawn" and
            # "forkserver", whose own pickler rejects them.
            initargs=(cloudpickle.dumps(sides),),
            context=context,
        )
        self._finalizer = weakref.finalize(self, _release, self._executor, self._arena)
        self._executor.submit(int)  # start every worker now, in the background

    def product(self, X: np.ndarray, adjoint: bool) -> np.ndarray:
        """``L @ X`` (or ``L.H @ X``) by column blocks in the workers."""
        if X.dtype.hasobject:
            raise TypeError(f"pmatmat needs a numeric operand, got dtype {X.dtype}")
        with self._lock:
            if not self._finalizer.alive:
                raise ValueError("this pmatmat operator is closed")
            out = self.sides.output(X, adjoint)
            in_spec = self._arena.put(X)
            out_spec, out.array = create_array(out.array.shape, out.array.dtype)
            try:
                self._run(in_spec, out_spec, adjoint, out)
            finally:
                unlink(out_spec)
        return self.sides.learn(X, adjoint, out.result())

    def _run(self, in_spec, out_spec, adjoint: bool, out) -> None:
        blocks = column_blocks(in_spec.shape[1], self.nworkers)
        shares = [None] * len(blocks)
        if 1 <= len(blocks) < self.nworkers:
            shares = self._executor.plan.shares(len(blocks))
        futures = [
            self._executor.submit(
                _run_block,
                in_spec,
                out_spec,
                start,
                stop,
                adjoint,
                share,
                self._executor.plan.pinned,
            )
            for (start, stop), share in zip(blocks, shares, strict=True)
        ]
        for (start, stop), future in zip(blocks, futures, strict=True):
            block = future.result()
            if block is None:
                out.mark_written()
            else:
                out.keep(start, stop, block)

    def close(self) -> None:
        """Stop the workers and remove the operand file."""
        self._finalizer()


def _release(executor, arena: InputArena) -> None:
    executor.shutdown(wait=True)
    arena.close()


# -- worker side ------------------------------------------------------------
_SIDES: OperatorSides | None = None
_INPUT: dict[str, mmap.mmap] = {}


def _keep(payload: bytes) -> None:
    """Worker initializer: unpickle ``L`` once and keep it for the pool's life."""
    global _SIDES
    _SIDES = cloudpickle.loads(payload)


def _input(spec: ArraySpec) -> np.ndarray:
    """The operand, from the arena file, mapped once per worker and per file."""
    buffer = _INPUT.get(spec.path)
    if buffer is None:
        _INPUT.clear()  # an old mapping goes with its last array
        fd = os.open(spec.path, os.O_RDONLY)
        try:
            buffer = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        _INPUT[spec.path] = buffer
    return view_array(buffer, spec)


def _run_block(in_spec, out_spec, start, stop, adjoint, share, pinned):
    """Compute one block; write it in place, or return it if its dtype differs."""
    X = _input(in_spec)[:, start:stop]
    if share is None:
        block = _SIDES.compute(X, adjoint)
    else:
        block = run_with_budget(share, _SIDES.compute, X, adjoint, pinned=pinned)
    if block.dtype != np.dtype(out_spec.dtype):
        return block
    out = open_array(out_spec)
    out[:, start:stop] = block
    return None
