"""Held-out simulated ultrasound frames with no needle in them at all.

The held-out set of :func:`guidance.training.dataset.build_dataset` has about 60
needle-free frames in 400, and most of those are not free of needle echoes: the needle
lies just outside the labelled slice (its elevational weight below one half, so no
pixel is labelled needle) while its echo is still drawn. A needle reported there is
not plainly false, and 60 frames cannot show a 2 % rate anyway (0 of 60 is still
0-6 %).

This set is the scanning before the needle goes in: held-out scenes
(:func:`~guidance.training.dataset.heldout_params`, seeds of their own) simulated
:func:`~guidance.training.dataset.without_needle` (no echo, reverberation or shadow),
with the held-out split's curved distractors in the same share of frames and, in
:data:`HARD_NEGATIVE_FRACTION` of them, the straight hard negatives of
:func:`~guidance.training.distractors.add_us_hard_negatives` (fascia, bone surface,
reverberation, probe artefacts, flat arcs) from a generator of their own. Every needle
reported on it is false.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from guidance.training.dataset import (
    FRAMES_PER_SCENE,
    LABELS,
    US_DISTRACTOR_FRACTION,
    SegDataset,
    _on_grid,
    _Row,
    grid_spec,
    heldout_params,
    needle_free_truth,
    without_needle,
)
from guidance.training.distractors import add_us_distractors, add_us_hard_negatives

__all__ = ["HARD_NEGATIVE_FRACTION", "NEEDLE_FREE_FRAMES", "build_needle_free_set"]

#: Default size: 400 frames; 0 of 400 gives a Wilson 95 % upper bound of 0.95 %, 4 of
#: 400 (1 %) one of 2.5 %.
NEEDLE_FREE_FRAMES = 400
#: Share of frames with straight hard negatives.
HARD_NEGATIVE_FRACTION = 0.5
#: Version of this set's generation (in its description and cache key).
NEEDLE_FREE_VERSION = 1
_SEED_OFFSET = 9_000_011

Progress = Callable[[int, int, str], None]


def _scene(seed: int, scene: int) -> list[_Row]:
    from guidance.sim import make_scanner
    from models.preprocess import ModelInput

    s = (seed * 100_003 + scene + _SEED_OFFSET) % (2**31)
    rng = np.random.default_rng(s)
    extra = np.random.default_rng([s, 7])
    params = without_needle(heldout_params("us", rng))
    size = int(rng.choice([256, 384, 512]))
    scanner = make_scanner("us", size=size, seed=s, params=params)
    duration = (scanner.path.plan_length_mm - params.needle.start_depth_mm) \
        / params.needle.speed_mm_s
    inp = ModelInput(grid_spec("us"))
    out = []
    for k in range(FRAMES_PER_SCENE["us"]):
        t = float(rng.uniform(0.0, max(duration, 0.1) * 1.15))
        f = scanner.frame(k, t)
        truth = needle_free_truth(f.truth)
        plane, lab = f.image.voxels[0], truth.labels
        sp = float(f.image.spacing_mm[0])
        if rng.random() < US_DISTRACTOR_FRACTION:
            plane, lab = add_us_distractors(plane, lab, sp, rng)
        if extra.random() < HARD_NEGATIVE_FRACTION:
            plane, lab = add_us_hard_negatives(plane, lab, sp, extra)
        out.append(_on_grid(inp, plane, sp, lab, truth, len(LABELS["us"])))
    return out


def build_needle_free_set(
    n_frames: int = NEEDLE_FREE_FRAMES,
    seed: int = 0,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> SegDataset:
    """Simulate the needle-free held-out ultrasound set (see the module docstring).

    Args:
        n_frames: frames (rounded up to whole scenes of 8).
        seed: base seed; the set depends only on ``n_frames`` and ``seed``.
        cache_dir: keep the set as ``.npz`` there and reuse it.
        progress: ``progress(done, total, message)`` after every scene.

    Returns:
        The set (split ``"needle-free"``; no pixel labelled needle, no tip in view).

    Raises:
        ValueError: n_frames < 1.
    """
    if not isinstance(n_frames, int) or isinstance(n_frames, bool) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
    per = FRAMES_PER_SCENE["us"]
    n_scenes = math.ceil(n_frames / per)
    description = {
        "simulator": "guidance.sim ultrasound without the needle (no echo, reverberation "
                     "or shadow), held-out parameters, curved distractors in "
                     f"{US_DISTRACTOR_FRACTION:.0%} and straight hard negatives "
                     f"(add_us_hard_negatives) in {HARD_NEGATIVE_FRACTION:.0%} of frames",
        "split": "needle-free", "seed": seed, "frames": n_scenes * per, "scenes": n_scenes,
        "frames_per_scene": per, "parameters": "heldout_params (seeds of their own)",
        "version": NEEDLE_FREE_VERSION,
    }
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"us-needle-free-v{NEEDLE_FREE_VERSION}-{n_frames}-{seed}.npz"
        if cache.is_file():
            try:
                z = np.load(cache)
                return SegDataset("us", "needle-free", LABELS["us"], z["images"], z["labels"],
                                  z["spacing_mm"], z["tip_ij"], z["axis_ij"], description)
            except (OSError, KeyError, ValueError):
                pass
    rows = []
    for k in range(n_scenes):
        rows += _scene(seed, k)
        if progress:
            progress(k + 1, n_scenes, "us needle-free scenes")
    ds = SegDataset(
        "us", "needle-free", LABELS["us"],
        np.stack([r[0] for r in rows]).astype(np.float32),
        np.stack([r[1] for r in rows]).astype(np.uint8),
        np.array([r[2] for r in rows], np.float64),
        np.stack([r[3] for r in rows]).astype(np.float64),
        np.stack([r[4] for r in rows]).astype(np.float64), description)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, images=ds.images, labels=ds.labels, spacing_mm=ds.spacing_mm,
                 tip_ij=ds.tip_ij, axis_ij=ds.axis_ij)
        tmp.replace(cache)
    return ds
