"""The needle as a line, fitted to a segmentation's needle mask.

A network gives per-pixel needle probabilities; the needle estimate is the straight line
through its most supported connected piece: weighted principal axis of the pixels at or
above ``threshold`` in the component with the largest probability mass, ends at the
extreme projections of its pixel centres on that axis. Which end is the tip follows the
same rule as the classical detector (:mod:`trackers.needle_detect`): the end away from
``hub_hint_ij``, or, without a hint, the end farther from the image border (needles
enter from outside the picture).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from trackers.needle_detect import NeedleDetection, orient_ends

__all__ = ["MIN_NEEDLE_LENGTH_MM", "fit_needle_mask", "needle_from_probs"]

#: A needle piece shorter than this is not reported (live loop and evaluation), mm.
MIN_NEEDLE_LENGTH_MM = 5.0

F64 = npt.NDArray[np.float64]


def fit_needle_mask(
    prob: npt.NDArray[np.floating],
    *,
    threshold: float = 0.5,
    min_length_px: float = 8.0,
    min_pixels: int = 12,
    hub_hint_ij: npt.ArrayLike | None = None,
) -> NeedleDetection | None:
    """Fit the needle line to a probability map.

    Args:
        prob: (rows, cols) needle probability in [0, 1] (or a 0/1 mask).
        threshold: pixels at or above it are needle.
        min_length_px: shorter pieces are not reported, pixels.
        min_pixels: smaller pieces are not reported.
        hub_hint_ij: (2,) (col, row) of a point on the hub side, pixels.

    Returns:
        The needle (pixel coordinates of ``prob``) with ``confidence`` = mean probability
        of the piece times its straightness (1 - minor/major axis ratio), or None.

    Raises:
        ValueError: prob is not 2D.
    """
    if prob.ndim != 2:
        raise ValueError(f"prob must be 2D (rows, cols), got shape {prob.shape}")
    mask = (prob >= threshold).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_pixels) + 1
    if big.size == 0:
        return None
    if big.size == 1:
        k = int(big[0])
    else:  # the piece with the most probability mass
        mass = np.bincount(lab.ravel(), weights=prob.ravel().astype(np.float64), minlength=n)
        k = int(big[np.argmax(mass[big])])
    rr, cc = np.nonzero(lab == k)
    w = prob[rr, cc].astype(np.float64)
    pts = np.stack([cc, rr], axis=1).astype(np.float64)
    centre = (pts * w[:, None]).sum(0) / w.sum()
    d = pts - centre
    cov = (d * w[:, None]).T @ d / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    u = evecs[:, 1]
    t = d @ u
    t0, t1 = float(t.min()), float(t.max())
    length = t1 - t0
    if length < min_length_px:
        return None
    a, b = centre + t0 * u, centre + t1 * u
    hub, tip = orient_ends(a, b, prob.shape, hub_hint_ij)
    axis = (tip - hub) / max(length, 1e-9)
    straight = 1.0 - float(np.sqrt(max(evals[0], 0.0) / max(evals[1], 1e-12)))
    conf = float(np.clip(w.mean() * straight, 0.0, 1.0))
    return NeedleDetection(tip, hub, axis, length, int(rr.size), float(w.mean()), conf)


def needle_from_probs(
    needle_prob: npt.NDArray[np.floating],
    spacing_mm: float,
    nominal_spacing_mm: float,
    min_length_mm: float = MIN_NEEDLE_LENGTH_MM,
    threshold: float = 0.5,
    hub_hint_ij: npt.ArrayLike | None = None,
) -> NeedleDetection | None:
    """The needle reported from a segmentation's needle probability map: the rule the
    live loop and the evaluation share.

    Args:
        needle_prob: (R, C) needle probability on the model grid.
        spacing_mm: model-grid spacing of this frame, mm/pixel (NaN: unknown; then
            ``nominal_spacing_mm`` is used).
        nominal_spacing_mm: the model's nominal grid spacing, mm/pixel.
        min_length_mm: shorter pieces are not reported, mm.
        threshold: probability at or above which a pixel is needle.
        hub_hint_ij: (2,) (col, row) hub-side point on the model grid, or None.

    Returns:
        The needle in model-grid pixel coordinates, or None.
    """
    sp = spacing_mm if math.isfinite(spacing_mm) and spacing_mm > 0 else nominal_spacing_mm
    return fit_needle_mask(needle_prob, threshold=threshold,
                           min_length_px=max(4.0, min_length_mm / sp), hub_hint_ij=hub_hint_ij)
