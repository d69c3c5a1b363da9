"""Latency statistics: per stage and end to end, as percentiles, in fixed memory."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["LatencyRecorder", "percentiles"]


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
