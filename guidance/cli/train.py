"""``guidance train``: train a segmentation model on simulated frames, export ONNX + card.

Deterministic for a given ``--seed`` (and thread count): the training set, the batch
order and the augmentations all come from it. By default the result replaces the shipped
model in ``models/weights`` and is then evaluated (``guidance eval``), the metrics
written into the card. A CT model's needle-rule limit (a needle is a line, not an edge)
is measured on its training frames and written into its card first, as is an ultrasound
model's confidence limit (:mod:`guidance.training.rule_limits`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from guidance.cli.common import path_arg
from guidance.cli.main import UsageError
from guidance.records import MODALITIES
from guidance.training.rule_limits import (
    FLANK_CHECK_MODALITIES,
    PROB_CHECK_MODALITIES,
    measure_flank_limit,
    measure_prob_limit,
)

__all__ = ["register"]

#: Training frames per modality (default of --frames).
DEFAULT_FRAMES = {"us": 3200, "fluoro": 1920, "ct": 2400}
#: Optimiser steps per modality (default of --steps): those of the shipped models, each
#: well inside 30 min on this 2-core machine (about 0.2 s a step with one thread).
DEFAULT_STEPS = {"us": 4500, "fluoro": 7000, "ct": 3600}
#: Version written into the card: bumped with the recipe (fluoro 1.1.0: training data
#: fluoro 7, 7000 steps; us 1.1.0: training data us 5 (needle-free scenes, straight hard
#: negatives), the confidence limit in the card).
MODEL_VERSION = {"us": "1.1.0", "fluoro": "1.1.0", "ct": "1.0.0"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a segmentation model (ONNX + model card)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=MODALITIES, required=True,
                   help="which model: ultrasound, fluoroscopy or CT(-fluoroscopy) slices")
    p.add_argument("--out", type=path_arg("output_dir", Path), default=None, metavar="DIR",
                   help="where to write <modality>-seg.onnx/.json (default: the shipped "
                        "models/weights folder)")
    p.add_argument("--frames", type=int, default=None, help="training frames")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated data and the initial weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as the shipped models: the same seed and "
                        "thread count give the same weights)")
    p.add_argument("--cache", type=path_arg("output_dir", Path, parents=True),
                   default=Path.home() / ".cache" / "guidance" / "datasets",
                   metavar="DIR", help="dataset cache folder")
    p.add_argument("--eval-frames", type=int, default=400,
                   help="held-out frames for the evaluation after training")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.set_defaults(func=run)


def _measure_rule_limits(card: Any, card_path: Path, ds: Any) -> Any:
    """Measure the model's own needle-rule limits on its training frames and write them
    into its card (:func:`guidance.training.rule_limits.measure_flank_limit` for CT,
    :func:`~guidance.training.rule_limits.measure_prob_limit` for ultrasound)."""
    from guidance.cli.common import progress_line
    from models.segmenter import Segmenter

    show = progress_line(f"rule limits {card.modality}")
    seg = Segmenter(card_path, chain=["onnxruntime-cpu"])
    measure, field, what = ((measure_flank_limit, "max_flank_asymmetry", "flank")
                            if card.modality in FLANK_CHECK_MODALITIES
                            else (measure_prob_limit, "min_mean_prob", "confidence"))
    try:
        limits, record = measure(
            seg, ds, progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
    except ValueError as e:  # e.g. a model trained for a few steps finds no needle
        print(f"WARNING: no {what} limit in the card, the model gets the default needle "
              f"rule: {e}", flush=True)
        limits, record = {}, {field: {"not_measured": str(e)}}
    else:
        print(f"needle rule limits (training frames): {limits}", flush=True)
    card = dataclasses.replace(card, needle_rule=limits,
                               training={**card.training, "needle_rule": record})
    card.save(card_path)
    return card


def run(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError as e:
        raise UsageError("guidance train needs torch: pip install -e '.[train]' "
                         "(CPU build: pip install torch==2.13.0)") from e
    from guidance.cli.common import progress_line
    from guidance.training.dataset import GRID, LABELS, NORMALISATION, build_dataset
    from models.export import export_model
    from models.shipped import WEIGHTS_DIR
    from models.train import TrainConfig, train

    m = args.modality
    frames = args.frames or DEFAULT_FRAMES[m]
    steps = args.steps or DEFAULT_STEPS[m]
    if frames < 8 or steps < 1 or args.seed < 0 or args.threads < 1:
        raise UsageError("--frames must be >= 8, --steps >= 1, --seed >= 0, --threads >= 1")
    out_dir = args.out or WEIGHTS_DIR
    t0 = time.perf_counter()
    show = progress_line(f"simulating {m}")
    ds = build_dataset(m, "train", frames, args.seed, cache_dir=args.cache,
                       progress=lambda d, t, msg: show(d / t, f"{d}/{t} {msg}"))
    t_data = time.perf_counter() - t0
    print(f"training set: {len(ds)} frames in {t_data:.0f} s", flush=True)
    cfg = TrainConfig(steps=steps, seed=args.seed, threads=args.threads,
                      flip_lr=True, flip_ud=m != "us")
    bar = progress_line(f"training {m}")
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
        card = _measure_rule_limits(card, card_path, ds)
    print(f"wrote {card_path} and {out_dir / card.onnx_file} "
          f"({(out_dir / card.onnx_file).stat().st_size / 1e6:.2f} MB); "
          f"training took {wall_s_total / 60:.1f} min", flush=True)
    if args.no_eval:
        return 0
    from guidance.cli.evaluate import evaluate_and_record

    metrics = evaluate_and_record(card_path, m, n_test=args.eval_frames, seed=args.seed,
                                  cache=args.cache, update_card=True)
    print(json.dumps(metrics["targets"], indent=1))
    return 0
