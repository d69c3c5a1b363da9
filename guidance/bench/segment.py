"""Segmentation latency per backend and input size (``guidance bench --stage segment``).

For each backend (``auto`` = every backend this machine has, or a list) and each model
grid size, a :class:`models.segmenter.Segmenter` is loaded on that backend alone, warmed
up, and timed over simulated ultrasound frames of that size (``guidance.sim``, a pool of
distinct frames cycled). Two series:

- ``segment_ms``: the whole ``Segmenter.segment`` call (resample + normalise, network,
  arg-max), what the pipeline's segment stage pays;
- ``infer_ms``: the backend's ``run`` alone, within the same calls.

Baseline in the same run, on the same frames: the classical ridge needle detector
(:class:`trackers.needle_detect.RidgeNeedleDetector`), so ratios hold on a noisy
machine. Also records which backend the ``auto`` chain picks here and why.

Sizes other than the card's grid run the same network on a different grid (it is fully
convolutional): a speed figure, not an accuracy one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guidance.bench.measure import BenchReport, Say, log_say
from guidance.io.validate import InputError
from guidance.session import SessionError, write_summary

__all__ = ["TARGET_ORT_256_P50_MS", "parse_sizes", "run_segment"]

#: The issue's target: ONNX Runtime on the CPU, 256 x 256 grid, median segment() time.
TARGET_ORT_256_P50_MS = 12.0
_FRAME_POOL = 24


def parse_sizes(text: str) -> list[int]:
    """Grid sizes from ``"128,256,512"``: pixels a side, multiples of 16 in 32..2048.

    Raises:
        ValueError: not a list of such sizes (the message names the text).
    """
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"expected sizes like 128,256,512, got {text!r}") from None
    bad = [s for s in sizes if not (32 <= s <= 2048 and s % 16 == 0)]
    if not sizes or bad:
        raise ValueError(f"sizes must be multiples of 16 in 32..2048, got {text!r}")
    return sizes


def _card_path(card: Path | None, modality: str | None) -> Path:
    if card is not None:
        return Path(card)
    from models.shipped import shipped_card

    try:
        return shipped_card(modality or "us")
    except (ValueError, FileNotFoundError) as e:
        raise SessionError(f"{e} (or pass --model CARD)") from e


def _backend_names(text: str) -> list[str]:
    from models.backends import AUTO_CHAIN, BACKENDS, parse_chain

    if text.strip() == "auto":
        return list(AUTO_CHAIN) + [n for n in BACKENDS if n not in AUTO_CHAIN]
    try:
        names, _ = parse_chain(text)
    except ValueError as e:
        raise InputError(f"--backends: {e}") from e
    return list(names)


def _frames(size: int, seed: int) -> tuple[list[np.ndarray], float]:
    from guidance.sim import make_scanner

    scanner = make_scanner("us", size=size, seed=seed)
    frames, spacing = [], math.nan
    for i in range(_FRAME_POOL):
        f = scanner.frame(i, i / 15.0)
        frames.append(np.ascontiguousarray(f.image.voxels[0]))
        spacing = float(np.linalg.norm(f.image.ijk_to_lps[:3, 0]))
    return frames, spacing


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    from guidance.pipeline.stats import percentiles

    return percentiles(np.asarray(values_ms, np.float64))


def _time_segmenter(seg: Any, frames: list[np.ndarray], spacing: float, n: int,
                    warmup: int) -> tuple[list[float], list[float]]:
    for i in range(warmup):
        seg.segment(frames[i % len(frames)], spacing)
    total, infer = [], []
    for i in range(n):
        r = seg.segment(frames[i % len(frames)], spacing)
        total.append(r.total_ms)
        infer.append(r.infer_ms)
    return total, infer


def _time_ridge(frames: list[np.ndarray], n: int, warmup: int) -> list[float]:
    from trackers.needle_detect import RidgeNeedleDetector

    det = RidgeNeedleDetector()
    for i in range(warmup):
        det.detect(frames[i % len(frames)])
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        det.detect(frames[i % len(frames)])
        out.append((time.perf_counter_ns() - t0) * 1e-6)
    return out


def _histogram(path: Path, series: dict[str, list[float]], title: str) -> None:
    """One panel per size (series named ``backend@size``), log-scale latency axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({int(k.rsplit("@", 1)[1]) for k in series})
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5 * max(1, len(sizes)), 4.5),
                             dpi=100, squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=False):
        group = {k.rsplit("@", 1)[0]: v for k, v in series.items()
                 if k.endswith(f"@{size}") and v}
        if group:
            lo = max(min(min(v) for v in group.values()), 0.01)
            hi = max(max(v) for v in group.values()) + 1e-3
            bins = np.logspace(np.log10(lo), np.log10(hi), 60).tolist()
            for name, v in group.items():
                ax.hist(v, bins=bins, alpha=0.55,
                        label=f"{name} (p50 {np.median(v):.2f}, p99 "
                              f"{np.percentile(v, 99):.2f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("frames")
        ax.set_title(f"{size} x {size}")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_segment(json_path: Path, *, card: Path | None = None, modality: str | None = None,
                backends: str = "auto", sizes: Sequence[int] = (128, 256, 512),
                frames: int = 300, warmup: int = 20, threads: int | None = None,
                say: Say = log_say) -> BenchReport:
    """Time every backend at every size; write ``json_path`` and a histogram PNG (one
    panel per size) beside it.

    Args:
        json_path: where the results go (JSON).
        card: the model card (JSON), or ``None`` for the shipped model of ``modality``.
        modality: the shipped model's modality (default ``us``).
        backends: ``auto`` (every backend this machine has) or names from
            ``models.backends.BACKENDS``, comma-separated.
        sizes: model grid sizes, pixels a side.
        frames: timed frames per backend and size (>= 10).
        warmup: untimed frames first.
        threads: CPU threads for ONNX Runtime / torch (>= 1; ``None``: the CPUs there are).
        say: where the progress lines go.

    Returns:
        The report; ``results`` (one row per backend and size: ``segment_ms``,
        ``infer_ms``, p50/p95/p99/max, ms), ``baseline_ridge_ms`` per size, ``skipped``
        backends and, with onnxruntime-cpu at 256, the ``target``.

    Raises:
        InputError: ``frames``, ``threads`` or ``backends`` refused; a card that cannot
            be used (the :class:`models.card.CardError`'s message).
        SessionError: no shipped model; no backend can run the model.
    """
    from models.backends import NoBackendError
    from models.card import CardError, load_card
    from models.segmenter import Segmenter

    if frames < 10:
        raise InputError(f"--frames must be >= 10, got {frames}")
    if threads == 0:
        raise InputError("--threads must be >= 1")
    card_path = _card_path(card, modality)
    try:
        model, _ = load_card(card_path)
    except CardError as e:
        raise InputError(str(e)) from e
    names = _backend_names(backends)
    out: dict[str, Any] = {
        "stage": "segment", "model": {"card": str(card_path), "name": model.name,
                                      "version": model.version,
                                      "onnx_sha256": model.onnx_sha256,
                                      "grid": list(model.input_shape),
                                      "n_classes": model.n_classes},
        "frames": frames, "warmup": warmup, "sizes": list(sizes),
        "cpu_count": os.cpu_count(), "threads": threads,
        "frame_source": "guidance.sim ultrasound, uint8, square, "
                        f"{_FRAME_POOL} distinct frames cycled",
    }
    out["loadavg_1min_start"] = round(os.getloadavg()[0], 2)
    try:
        auto = Segmenter(card_path, "auto", threads=threads)
    except NoBackendError as e:
        raise SessionError(str(e)) from e
    out["auto_choice"] = {"backend": auto.backend.name, "degraded": auto.degraded,
                          "degraded_reason": auto.degraded_reason,
                          "fallbacks": [dataclasses.asdict(f) for f in auto.fallbacks]}
    say(f"auto chain picks {auto.backend.name} here"
        + "".join(f"\n  skipped {f.backend} ({f.kind}): {f.reason}" for f in auto.fallbacks))
    del auto
    # Each backend is loaded alone (an explicit chain), so a missing one would log a
    # DEGRADED warning; the bench says its own one line per missing backend instead.
    chain_log = logging.getLogger("models.backends.chain")
    level = chain_log.level
    chain_log.setLevel(logging.ERROR)
    try:
        series = _run_all(card_path, names, list(sizes), frames, warmup, threads, out, say)
    finally:
        chain_log.setLevel(level)
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    _histogram(png, series, f"guidance bench --stage segment: segment() per backend, "
                            f"ridge detector baseline ({model.name}, {frames} frames)")
    return BenchReport(out, json_path, png)


def _run_all(card_path: Path, names: list[str], sizes: list[int], n: int, warmup: int,
             threads: int | None, out: dict[str, Any], say: Say) -> dict[str, list[float]]:
    """Time every size and backend into ``out``; returns the series for the histogram."""
    from models.backends import NoBackendError
    from models.segmenter import Segmenter

    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    baseline: dict[str, Any] = {}
    series: dict[str, list[float]] = {}
    for size in sizes:
        frames, spacing = _frames(size, seed=7)
        say(f"[{size}x{size}] ridge baseline: {n} frames ...")
        ridge = _time_ridge(frames, n, warmup)
        baseline[str(size)] = _percentiles(ridge)
        series[f"ridge@{size}"] = ridge
        for name in names:
            if name in skipped:
                continue
            try:
                seg = Segmenter(card_path, [name], threads=threads, input_shape=(size, size))
            except NoBackendError as e:
                fb = e.fallbacks[0]
                skipped[name] = f"{fb.kind}: {fb.reason}"
                say(f"  {name} {fb.kind}: {fb.reason}")
                continue
            say(f"[{size}x{size}] {name}: {n} frames ...")
            total, infer = _time_segmenter(seg, frames, spacing, n, warmup)
            t, inf = _percentiles(total), _percentiles(infer)
            row = {"backend": name, "size": size, "segment_ms": t, "infer_ms": inf,
                   "overhead_p50_ms": round(t["p50"] - inf["p50"], 3),
                   "p50_ratio_over_ridge": round(t["p50"] / baseline[str(size)]["p50"], 3),
                   "describe": seg.backend.describe()}
            results.append(row)
            series[f"{name}@{size}"] = total
            say(f"      segment p50 {t['p50']:.2f}  p95 {t['p95']:.2f}  p99 {t['p99']:.2f}  "
                f"max {t['max']:.2f} ms | run p50 {inf['p50']:.2f} ms | ridge p50 "
                f"{baseline[str(size)]['p50']:.2f} ms")
            del seg
    out["results"] = results
    out["baseline_ridge_ms"] = baseline
    out["skipped"] = skipped
    out["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    ort256 = [r for r in results if r["backend"] == "onnxruntime-cpu" and r["size"] == 256]
    if ort256:
        p50 = ort256[0]["segment_ms"]["p50"]
        out["target"] = {"what": "onnxruntime-cpu at 256x256, segment() p50 <= "
                                 f"{TARGET_ORT_256_P50_MS} ms",
                         "p50_ms": p50, "met": bool(p50 <= TARGET_ORT_256_P50_MS)}
    return series
