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

    def acquire(self, nbytes: int, start_bytes: int | None = None) -> bytearray:
        """A buffer nobody else references: a pooled one of at least ``nbytes`` bytes
        when one is free, else a new one.

        Args:
            nbytes: bytes wanted.
            start_bytes: when given and a new buffer is needed, it is only
                ``min(nbytes, start_bytes)`` long; the caller enlarges it with :meth:`grow`
                as data arrives (memory follows the bytes received, not a size declared).
        """
        size = nbytes if start_bytes is None else min(nbytes, max(1, start_bytes))
        with self._lock:
            bufs = self._bufs
            free_small = -1
            for idx in range(len(bufs)):
                buf = bufs[idx]
                if sys.getrefcount(buf) <= _FREE_REFCOUNT:
                    if len(buf) >= nbytes:
                        return buf
                    free_small = idx
            new = bytearray(size)
            self.allocations += 1
            if free_small >= 0:  # free but too small (a larger frame size): replace it
                self._bufs[free_small] = new
            elif len(self._bufs) < self._max:
                self._bufs.append(new)
            else:
                self.overflow_allocations += 1
                log.debug("buffer pool exhausted (%d in use); temporary buffer", self._max)
            return new

    def grow(self, buf: bytearray, nbytes: int, keep_bytes: int) -> bytearray:
        """A buffer of ``nbytes`` holding ``buf[:keep_bytes]``; it replaces ``buf`` in the
        pool (``buf`` itself may still be referenced by the caller, so it is copied, not
        resized)."""
        new = bytearray(nbytes)
        new[:keep_bytes] = memoryview(buf)[:keep_bytes]
        with self._lock:
            self.allocations += 1
            for idx, b in enumerate(self._bufs):
                if b is buf:
                    self._bufs[idx] = new
                    break
        return new
