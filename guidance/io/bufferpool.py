"""Receive buffers sized once and reused, freed by reference counting.

A decoded IMAGE views its receive buffer (``np.frombuffer``), so a buffer is reused
only when nothing references it any more: not the latest-value slot, not the pipeline,
not the recorder. CPython's reference count tells that exactly, with no explicit
release calls to forget. Thread-safe.
"""

from __future__ import annotations

import logging
import sys
import threading

__all__ = ["BufferPool"]

log = logging.getLogger(__name__)

# References held while checking a pooled buffer: the pool's list, the loop variable
# and getrefcount's own argument.
_FREE_REFCOUNT = 3


class BufferPool:
    """Pool of bytearrays; :meth:`acquire` returns one with no outside references.

    Args:
        max_buffers: buffers kept in the pool; when all are in use a temporary buffer
            is allocated (and counted in ``overflow_allocations``) rather than blocking.
    """

    def __init__(self, max_buffers: int = 6) -> None:
        if max_buffers < 1:
            raise ValueError(f"max_buffers must be >= 1, got {max_buffers}")
        self._bufs: list[bytearray] = []
        self._max = max_buffers
        self._lock = threading.Lock()
        self.allocations = 0
        self.overflow_allocations = 0

    def acquire(self, nbytes: int) -> bytearray:
        """A buffer of at least ``nbytes`` bytes that nobody else references."""
        with self._lock:
            bufs = self._bufs
            for idx in range(len(bufs)):
                buf = bufs[idx]
                if sys.getrefcount(buf) <= _FREE_REFCOUNT:
                    if len(buf) >= nbytes:
                        return buf
                    # Free but too small (a larger frame size): replace it once.
                    new = bytearray(nbytes)
                    self._bufs[idx] = new
                    self.allocations += 1
                    return new
            new = bytearray(nbytes)
            self.allocations += 1
            if len(self._bufs) < self._max:
                self._bufs.append(new)
            else:
                self.overflow_allocations += 1
                log.debug("buffer pool exhausted (%d in use); temporary buffer", self._max)
            return new
