"""``guidance bench --stage segment``: segmentation latency per backend and input size.

For each backend (``--backends``: ``auto`` = every backend this machine has, or a list)
and each model grid size (``--sizes``), a :class:`models.segmenter.Segmenter` is loaded
on that backend alone, warmed up, and timed over ``--frames`` simulated ultrasound
frames of that size (``guidance.sim``, a pool of distinct frames cycled). Two series:

- ``segment_ms``: the whole ``Segmenter.segment`` call (resample + normalise, network,
  arg-max), what the pipeline's segment stage pays;
- ``infer_ms``: the backend's ``run`` alone, within the same calls.

Baseline in the same run, on the same frames: the classical ridge needle detector
(:class:`trackers.needle_detect.RidgeNeedleDetector`), so ratios hold on a noisy
machine. Also records which backend the ``auto`` chain picks here and why.

The model is ``--model CARD`` or the shipped one for ``--modality`` (default us). Sizes
other than the card's grid run the same network on a different grid (it is fully
convolutional): a speed figure, not an accuracy one. Writes ``--json`` (p50/p95/p99/max
per series, ms) and a histogram PNG beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from guidance.cli.common import int_at_least, path_arg
from guidance.cli.main import UsageError
from guidance.records import MODALITIES

__all__ = ["TARGET_ORT_256_P50_MS", "add_arguments", "run"]

#: The issue's target: ONNX Runtime on the CPU, 256 x 256 grid, median segment() time.
TARGET_ORT_256_P50_MS = 12.0
_FRAME_POOL = 24


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,256,512, got {text!r}") from None
    bad = [s for s in sizes if not (32 <= s <= 2048 and s % 16 == 0)]
    if not sizes or bad:
        raise argparse.ArgumentTypeError(
            f"sizes must be multiples of 16 in 32..2048, got {text!r}")
    return sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this stage's options to the ``bench`` parser (names must not clash)."""
    g = p.add_argument_group("--stage segment")
    g.add_argument("--backends", default="auto", metavar="auto|NAME,...",
                   help="backends to time: auto = every one available here (default), or "
                        "names from models.backends.BACKENDS")
    g.add_argument("--sizes", type=_sizes, default=[128, 256, 512], metavar="S,S,...",
                   help="model grid sizes, px (default 128,256,512)")
    g.add_argument("--frames", type=int_at_least(0), default=300, metavar="N",
                   help="timed frames per backend and size (default 300)")
    g.add_argument("--warmup", type=int_at_least(0), default=20, metavar="N",
                   help="untimed frames first (default 20)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--model", type=path_arg("input_file", Path), metavar="CARD",
                     help="model card (JSON)")
    src.add_argument("--modality", default=None, choices=MODALITIES,
                     help="use the shipped model of this modality (default us); without "
                          "--stage, --modality us times the ultrasound anatomy check "
                          "(--stage anatomy)")
    g.add_argument("--threads", type=int_at_least(0), default=None, metavar="N",
                   help="CPU threads for ONNX Runtime / torch (default: the CPUs available)")


def _card_path(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return Path(args.model)
    from models.shipped import shipped_card

    try:
        return shipped_card(args.modality or "us")
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"{e} (or pass --model CARD)") from e


def _backend_names(text: str) -> list[str]:
    from models.backends import AUTO_CHAIN, BACKENDS, parse_chain

    if text.strip() == "auto":
        return list(AUTO_CHAIN) + [n for n in BACKENDS if n not in AUTO_CHAIN]
    try:
        names, _ = parse_chain(text)
    except ValueError as e:
        raise UsageError(f"--backends: {e}") from e
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


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; write ``args.json`` (p50/p95/p99/max) and a PNG beside it."""
    from models.backends import NoBackendError
    from models.card import CardError, load_card
    from models.segmenter import Segmenter

    if args.frames < 10:
        raise UsageError(f"--frames must be >= 10, got {args.frames}")
    if args.threads == 0:
        raise UsageError("--threads must be >= 1")
    card_path = _card_path(args)
    try:
        card, _ = load_card(card_path)
    except CardError as e:
        raise UsageError(str(e)) from e
    names = _backend_names(args.backends)
    sizes: list[int] = args.sizes
    out: dict[str, Any] = {
        "stage": "segment", "model": {"card": str(card_path), "name": card.name,
                                      "version": card.version,
                                      "onnx_sha256": card.onnx_sha256,
                                      "grid": list(card.input_shape),
                                      "n_classes": card.n_classes},
        "frames": args.frames, "warmup": args.warmup, "sizes": sizes,
        "cpu_count": os.cpu_count(), "threads": args.threads,
        "frame_source": "guidance.sim ultrasound, uint8, square, "
                        f"{_FRAME_POOL} distinct frames cycled",
    }
    out["loadavg_1min_start"] = round(os.getloadavg()[0], 2)
    try:
        auto = Segmenter(card_path, "auto", threads=args.threads)
    except NoBackendError as e:
        raise UsageError(str(e)) from e
    out["auto_choice"] = {"backend": auto.backend.name, "degraded": auto.degraded,
                          "degraded_reason": auto.degraded_reason,
                          "fallbacks": [dataclasses.asdict(f) for f in auto.fallbacks]}
    print(f"auto chain picks {auto.backend.name} here"
          + "".join(f"\n  skipped {f.backend} ({f.kind}): {f.reason}" for f in auto.fallbacks),
          flush=True)
    del auto
    # Each backend is loaded alone (an explicit chain), so a missing one would log a
    # DEGRADED warning; the bench prints its own one line per missing backend instead.
    chain_log = logging.getLogger("models.backends.chain")
    level = chain_log.level
    chain_log.setLevel(logging.ERROR)
    try:
        return _run_all(args, card_path, card, names, out)
    finally:
        chain_log.setLevel(level)


def _run_all(args: argparse.Namespace, card_path: Path, card: Any, names: list[str],
             out: dict[str, Any]) -> int:
    from models.backends import NoBackendError
    from models.segmenter import Segmenter

    sizes: list[int] = args.sizes
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    baseline: dict[str, Any] = {}
    series: dict[str, list[float]] = {}
    for size in sizes:
        frames, spacing = _frames(size, seed=7)
        print(f"[{size}x{size}] ridge baseline: {args.frames} frames ...", flush=True)
        ridge = _time_ridge(frames, args.frames, args.warmup)
        baseline[str(size)] = _percentiles(ridge)
        series[f"ridge@{size}"] = ridge
        for name in names:
            if name in skipped:
                continue
            try:
                seg = Segmenter(card_path, [name], threads=args.threads,
                                input_shape=(size, size))
            except NoBackendError as e:
                fb = e.fallbacks[0]
                skipped[name] = f"{fb.kind}: {fb.reason}"
                print(f"  {name} {fb.kind}: {fb.reason}", flush=True)
                continue
            print(f"[{size}x{size}] {name}: {args.frames} frames ...", flush=True)
            total, infer = _time_segmenter(seg, frames, spacing, args.frames, args.warmup)
            t, inf = _percentiles(total), _percentiles(infer)
            row = {"backend": name, "size": size, "segment_ms": t, "infer_ms": inf,
                   "overhead_p50_ms": round(t["p50"] - inf["p50"], 3),
                   "p50_ratio_over_ridge": round(t["p50"] / baseline[str(size)]["p50"], 3),
                   "describe": seg.backend.describe()}
            results.append(row)
            series[f"{name}@{size}"] = total
            print(f"      segment p50 {t['p50']:.2f}  p95 {t['p95']:.2f}  p99 {t['p99']:.2f}  "
                  f"max {t['max']:.2f} ms | run p50 {inf['p50']:.2f} ms | ridge p50 "
                  f"{baseline[str(size)]['p50']:.2f} ms", flush=True)
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
    from guidance.cli.common import write_summary

    path: Path = args.json
    write_summary(path, out)
    png = path.with_suffix(".png")
    _histogram(png, series, f"guidance bench --stage segment: segment() per backend, "
                            f"ridge detector baseline ({card.name}, {args.frames} frames)")
    print(f"wrote {path} and {png}")
    print(json.dumps({f"{r['backend']}@{r['size']}": r["segment_ms"]["p50"] for r in results},
                     indent=1))
    return 0
