"""``guidance train``: train a segmentation model on simulated frames, export ONNX + card.

Deterministic for a given ``--seed`` (and thread count): the training set, the batch
order and the augmentations all come from it. By default the result replaces the shipped
model in ``models/weights`` and is then evaluated (``guidance eval``), the metrics
written into the card. A CT model's needle-rule limit (a needle is a line, not an edge)
is measured on its training frames and written into its card first, as is an ultrasound
model's confidence limit (:mod:`guidance.training.rule_limits`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from guidance.workflows.evaluate import EvalReport, evaluate_and_record
from guidance.workflows.shared import Progress, WorkflowError, no_progress

__all__ = ["DEFAULT_FRAMES", "DEFAULT_STEPS", "MODEL_VERSION", "train_model"]

_log = logging.getLogger(__name__)

#: Training frames per modality (default of --frames).
DEFAULT_FRAMES = {"us": 3200, "fluoro": 1920, "ct": 2400}
#: Optimiser steps per modality (default of --steps): those of the shipped models, each
#: well inside 30 min on this 2-core machine (about 0.2 s a step with one thread).
DEFAULT_STEPS = {"us": 4500, "fluoro": 7000, "ct": 3600}
#: Version written into the card: bumped with the recipe (fluoro 1.1.0: training data
#: fluoro 7, 7000 steps; us 1.1.0: training data us 5 (needle-free scenes, straight hard
#: negatives), the confidence limit in the card).
MODEL_VERSION = {"us": "1.1.0", "fluoro": "1.1.0", "ct": "1.0.0"}


def _measure_rule_limits(card: Any, card_path: Path, ds: Any, progress: Progress,
                         say: Callable[[str], None]) -> Any:
    """Measure the model's own needle-rule limits on its training frames and write them
    into its card (:func:`guidance.training.rule_limits.measure_flank_limit` for CT,
    :func:`~guidance.training.rule_limits.measure_prob_limit` for ultrasound)."""
    from guidance.training.rule_limits import (
        FLANK_CHECK_MODALITIES,
        measure_flank_limit,
        measure_prob_limit,
    )
    from models.segmenter import Segmenter

    show = progress(f"rule limits {card.modality}")
    seg = Segmenter(card_path, chain=["onnxruntime-cpu"])
    measure, field, what = ((measure_flank_limit, "max_flank_asymmetry", "flank")
                            if card.modality in FLANK_CHECK_MODALITIES
                            else (measure_prob_limit, "min_mean_prob", "confidence"))
    try:
        limits, record = measure(
            seg, ds, progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
    except ValueError as e:  # e.g. a model trained for a few steps finds no needle
        say(f"WARNING: no {what} limit in the card, the model gets the default needle "
            f"rule: {e}")
        limits, record = {}, {field: {"not_measured": str(e)}}
    else:
        say(f"needle rule limits (training frames): {limits}")
    card = dataclasses.replace(card, needle_rule=limits,
                               training={**card.training, "needle_rule": record})
    card.save(card_path)
    return card


def train_model(modality: str, *, out_dir: Path | None, frames: int | None,
                steps: int | None, seed: int, threads: int, cache: Path, eval_frames: int,
                evaluate: bool = True, progress: Progress = no_progress,
                say: Callable[[str], None] = _log.info) -> EvalReport | None:
    """Simulate ``frames`` training frames (default :data:`DEFAULT_FRAMES`), train for
    ``steps`` (default :data:`DEFAULT_STEPS`) with ``seed`` and ``threads``, export ONNX
    and card to ``out_dir`` (default the shipped ``models/weights``), measure the needle
    rule limits, then (``evaluate``) evaluate on ``eval_frames`` held-out frames and store
    the metrics in the card. ``say`` gets the lines for people as they happen.

    Returns:
        The evaluation (None without ``evaluate``).

    Raises:
        WorkflowError: torch not installed; a count out of range (the message names the
            command's options).
    """
    try:
        import torch
    except ImportError as e:
        raise WorkflowError("guidance train needs torch: pip install -e '.[train]' "
                            "(CPU build: pip install torch==2.13.0)") from e
    from guidance.training.dataset import GRID, LABELS, NORMALISATION, build_dataset
    from guidance.training.rule_limits import FLANK_CHECK_MODALITIES, PROB_CHECK_MODALITIES
    from models.export import export_model
    from models.shipped import WEIGHTS_DIR
    from models.train import TrainConfig, train

    m = modality
    frames = frames or DEFAULT_FRAMES[m]
    steps = steps or DEFAULT_STEPS[m]
    if frames < 8 or steps < 1 or seed < 0 or threads < 1:
        raise WorkflowError("--frames must be >= 8, --steps >= 1, --seed >= 0, --threads >= 1")
    out_dir = out_dir or WEIGHTS_DIR
    t0 = time.perf_counter()
    show = progress(f"simulating {m}")
    ds = build_dataset(m, "train", frames, seed, cache_dir=cache,
                       progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
    t_data = time.perf_counter() - t0
    say(f"training set: {len(ds)} frames in {t_data:.0f} s")
    cfg = TrainConfig(steps=steps, seed=seed, threads=threads, flip_lr=True, flip_ud=m != "us")
    bar = progress(f"training {m}")
    started = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        el = time.perf_counter() - started
        eta = el / step * (total - step)
        bar(step / total, f"step {step}/{total} loss {loss:.3f} eta {eta / 60:.1f} min")

    res = train(ds.images, ds.labels, len(ds.label_names), cfg, progress=on_step)
    sp = ds.spacing_mm
    wall_s_total = round(time.perf_counter() - t0, 1)
    training = {
        "data": ds.description,
        "train": res.summary(),
        "wall_s_total": wall_s_total,
        "wall_s_data": round(t_data, 1),
        "torch": torch.__version__,
    }
    card, card_path = export_model(
        res.net, out_dir, name=f"{m}-seg", modality=m, version=MODEL_VERSION[m],
        labels=LABELS[m], input_shape=GRID, pixel_spacing_mm=round(float(np.median(sp)), 4),
        spacing_range_mm=(float(sp.min()) * 0.9, float(sp.max()) * 1.1),
        normalisation=NORMALISATION[m], training=training)
    if m in FLANK_CHECK_MODALITIES or m in PROB_CHECK_MODALITIES:
        card = _measure_rule_limits(card, card_path, ds, progress, say)
    say(f"wrote {card_path} and {out_dir / card.onnx_file} "
        f"({(out_dir / card.onnx_file).stat().st_size / 1e6:.2f} MB); "
        f"training took {wall_s_total / 60:.1f} min")
    if not evaluate:
        return None
    return evaluate_and_record(card_path, m, n_test=eval_frames, seed=seed, cache=cache,
                               update_card=True, progress=progress)
