"""Dividing ``n`` work items into chunks for parallel processing."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

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
            If ``njobs`` is not a non-negative integer.
        """
        n = njobs
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"njobs must be a non-negative integer, got {n!r}")
        n = int(n)
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
