"""Per-frame timing of the simulated scanner (percentiles, not asserted in tests)."""

from __future__ import annotations

import time

import numpy as np

__all__ = ["bench_sim"]


def bench_sim(modality: str, size: int, n: int = 50, seed: int = 0) -> dict[str, float]:
    """Time ``n`` frames of a default scanner.

    Args:
        modality: ``"us"`` or ``"fluoro"``.
        size: frame rows = columns.
        n: frames to time (after one warm-up frame).
        seed: scanner seed.

    Returns:
        ``setup_s`` (scanner construction, including the fluoroscopy projection unless
        cached), ``p50_ms``, ``p95_ms``, ``max_ms`` per frame, and ``fps`` (from p50).
    """
    from guidance.sim.scanner import make_scanner

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t0 = time.perf_counter()
    scanner = make_scanner(modality, size=size, seed=seed)
    setup_s = time.perf_counter() - t0
    scanner.frame(0, 0.0)
    times = np.empty(n)
    for k in range(n):
        t = time.perf_counter()
        scanner.frame(k + 1, 0.1 * (k + 1))
        times[k] = time.perf_counter() - t
    p50 = float(np.percentile(times, 50) * 1e3)
    return {
        "setup_s": setup_s,
        "p50_ms": p50,
        "p95_ms": float(np.percentile(times, 95) * 1e3),
        "max_ms": float(times.max() * 1e3),
        "fps": 1e3 / p50 if p50 > 0 else float("inf"),
    }
