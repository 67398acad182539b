"""Dividing ``n`` work items into chunks for parallel processing."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from .knobs import ArgumentTypeError

__all__ = ["WorkChunks"]

#: Below this many items the work is one chunk.
MIN_CHUNKABLE = 100
#: Aim for about this many chunks...
TARGET_CHUNKS = 1000
#: ...with chunks of at least this many items...
MIN_CHUNK_SIZE = 100
#: ...and at most this many.
MAX_CHUNK_SIZE = 4000


class WorkChunks(NamedTuple):
    """How ``total`` items are divided into chunks.

    Attributes
    ----------
    total : int
        Number of items.
    chunk_size : int
        Items per chunk (the last one may be shorter).
    chunk_count : int
        Number of chunks.

    Examples
    --------
    >>> WorkChunks.create(250_000)
    WorkChunks(total=250000, chunk_size=250, chunk_count=1000)
    >>> list(WorkChunks.create(250).ranges())
    [range(0, 100), range(100, 200), range(200, 250)]
    """

    total: int
    chunk_size: int
    chunk_count: int

    @classmethod
    def create(cls, njobs: int) -> WorkChunks:
        """Chunk ``njobs`` items: one chunk below 100, else about 1000 chunks.

        The chunk size is ``min(max(n // 1000, 100), 4000)``.

        Parameters
        ----------
        njobs : int
            Number of items (>= 0); LensKit's parameter name.

        Returns
        -------
        WorkChunks

        Raises
        ------
        ValueError
            If ``njobs`` is negative (LensKit returns nonsense chunks then).
        ArgumentTypeError
            (a :class:`TypeError` and a :class:`ValueError`) If ``njobs`` is
            not an integer; for a value that is no number, the message starts
            with the ``TypeError`` LensKit's ``njobs < 100`` raises.
        """
        n = _check_count(njobs)
        if n < MIN_CHUNKABLE:
            return cls(n, n, 1)
        size = min(max(n // TARGET_CHUNKS, MIN_CHUNK_SIZE), MAX_CHUNK_SIZE)
        return cls(n, size, math.ceil(n / size))

    def chunk(self, index: int) -> range:
        """The item indices of chunk ``index``.

        Raises
        ------
        IndexError
            If ``index`` is not in ``range(chunk_count)``.
        """
        if not 0 <= index < self.chunk_count:
            raise IndexError(
                f"index must be in range({self.chunk_count}), got {index!r}"
            )
        start = index * self.chunk_size
        return range(start, min(start + self.chunk_size, self.total))

    def ranges(self):
        """Yield the item indices of every chunk, in order (ranges)."""
        for index in range(self.chunk_count):
            yield self.chunk(index)


def _check_count(njobs: object) -> int:
    """``njobs`` as an int if it is a non-negative integer; else raise."""
    ours = f"njobs must be a non-negative integer, got {njobs!r}"
    if isinstance(njobs, bool) or not isinstance(njobs, numbers.Integral):
        if isinstance(njobs, numbers.Real):  # LensKit computes with these
            raise ArgumentTypeError(ours)
        kind = type(njobs).__name__
        lenskit = f"'<' not supported between instances of '{kind}' and 'int'"
        raise ArgumentTypeError(f"{lenskit}; {ours}")
    if njobs < 0:
        raise ValueError(ours)
    return int(njobs)
