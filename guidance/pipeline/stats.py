"""Latency statistics: per stage and end to end, as percentiles, in fixed memory."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["EndToEnd", "LatencyRecorder", "percentiles"]


def percentiles(values_ms: np.ndarray) -> dict[str, float]:
    """p50/p95/p99/max (and count, mean) of a 1D array of milliseconds; NaNs when empty."""
    if values_ms.size == 0:
        nan = float("nan")
        return {"count": 0, "p50": nan, "p95": nan, "p99": nan, "max": nan, "mean": nan}
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    return {
        "count": int(values_ms.size),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values_ms.max()), 3),
        "mean": round(float(values_ms.mean()), 3),
    }


class LatencyRecorder:
    """Named series of durations (ms) in preallocated ring buffers. Thread-safe.

    Args:
        capacity: values kept per series (the newest win when full).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._cap = capacity
        self._data: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, value_ms: float) -> None:
        """Record one value."""
        with self._lock:
            buf = self._data.get(name)
            if buf is None:
                buf = self._data[name] = np.empty(self._cap, np.float64)
                self._count[name] = 0
            n = self._count[name]
            buf[n % self._cap] = value_ms
            self._count[name] = n + 1

    def values(self, name: str) -> np.ndarray:
        """A copy of the values kept for ``name`` (empty when unknown)."""
        with self._lock:
            buf = self._data.get(name)
            if buf is None:
                return np.empty(0)
            n = min(self._count[name], self._cap)
            return buf[:n].copy()

    def names(self) -> list[str]:
        """Series names, in first-seen order."""
        with self._lock:
            return list(self._data)

    def summary(self) -> dict[str, dict[str, float]]:
        """Percentiles for every series."""
        return {name: percentiles(self.values(name)) for name in self.names()}


class EndToEnd:
    """End-to-end completion of one update: the first output handed to the kernel and
    the overlay composed, whichever is later, recorded once as ``end_to_end`` (ms from
    the input's last byte received). Thread-safe: the transport's thread reports the
    send, the processing thread the overlay.

    Args:
        stats: where ``end_to_end`` is recorded.
        received_ns: the input's last byte received, monotonic ns.
    """

    def __init__(self, stats: LatencyRecorder, received_ns: int) -> None:
        self._stats = stats
        self.received_ns = received_ns
        self._expect_send = True
        self._sent_ns = 0
        self._overlay_ns = 0
        self._recorded = False
        self._lock = threading.Lock()

    def sent(self, ns: int) -> None:
        """An output was handed to the kernel at ``ns`` (the first one counts)."""
        self._finish(sent_ns=ns)

    def nothing_sent(self) -> None:
        """Nobody to send to: the update is complete when its overlay is."""
        self._finish(expect_send=False)

    def overlay_composed(self, ns: int) -> None:
        """The overlay was composed at ``ns``."""
        self._finish(overlay_ns=ns)

    def _finish(self, sent_ns: int = 0, overlay_ns: int = 0, expect_send: bool = True
                ) -> None:
        with self._lock:
            if sent_ns and not self._sent_ns:
                self._sent_ns = sent_ns
            if overlay_ns:
                self._overlay_ns = overlay_ns
            self._expect_send = self._expect_send and expect_send
            send_done = self._sent_ns > 0 or not self._expect_send
            if self._overlay_ns and send_done and not self._recorded:
                self._recorded = True
                done = max(self._overlay_ns, self._sent_ns)
                self._stats.add("end_to_end", (done - self.received_ns) * 1e-6)
