"""The needle as a line, fitted to a segmentation's needle mask.

A network gives per-pixel needle probabilities; the needle estimate is the straight line
through its most supported connected piece: weighted principal axis of the pixels at or
above ``threshold`` in the component with the largest probability mass, ends at the
extreme projections of its pixel centres on that axis. Which end is the tip follows the
same rule as the classical detector (:mod:`trackers.needle_detect`): the end away from
``hub_hint_ij``, or, without a hint, the end farther from the image border (needles
enter from outside the picture).

Whether a piece is *reported* as a needle is :class:`NeedleRule`: long enough, straight
(its pixels lie close to its axis, as a needle's do, not spread like a curved wall or a
blob) and coherent (most of the frame's needle evidence lies along that one line, not
scattered in many pieces). For a model whose card says so (ultrasound) also *confident*
(the mean needle probability over the piece at least the card's limit); for one whose
card says so (CT) also a *line, not an edge* (:func:`flank_asymmetry`): a needle is
thin, so the tissue on its two sides is alike, where a bone plate such as the skull's
inner table has bone on one side and brain on the other. The live loop and ``guidance
eval`` apply the same rule (:meth:`NeedleRule.for_model`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from trackers.needle_detect import NeedleDetection, orient_ends

__all__ = [
    "MIN_NEEDLE_LENGTH_MM",
    "NeedleEvidence",
    "NeedleRule",
    "flank_asymmetry",
    "needle_evidence",
]

#: A needle piece shorter than this is not reported (live loop and evaluation), mm.
MIN_NEEDLE_LENGTH_MM = 5.0

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NeedleRule:
    """When the needle evidence of a probability map is reported as a needle.

    The limits were set on the simulated *training* frames of the shipped models (needle
    in view, piece >= 5 mm): the perpendicular scatter of true needle pieces about their
    axis stays below 0.33 mm (ultrasound), 0.75 mm = 1.0 px (fluoroscopy) and 0.65 mm =
    1.25 px (CT) in 99% of frames, and the collinear share is >= 0.5 in 99.5%.

    Attributes:
        threshold: probability at or above which a pixel is needle.
        min_length_mm: shorter pieces are not reported, mm.
        max_scatter_mm: the RMS distance of the piece's pixels from its axis may not
            exceed ``max(max_scatter_mm, max_scatter_px * nominal spacing)``, mm.
        max_scatter_px: see ``max_scatter_mm``: a model with a coarse nominal grid
            draws even a thin needle about a pixel wide, model pixels.
        band_mm: needle evidence within ``max(band_mm, 3 px)`` of the axis line counts
            as collinear (a needle broken by dropout stays one needle), mm.
        min_collinear: share of all needle evidence (probability mass at or above
            ``threshold``) that must be collinear, in [0, 1].
        max_flank_asymmetry: largest :func:`flank_asymmetry` of a reported needle (the
            piece must be a line, not an edge), or None: not checked. Only for images
            where the needle is brighter than everything around it (CT); a model's card
            carries the limit measured on its training frames (:meth:`for_model`).
        flank_mm: (near, far) distance of the flanks from the axis, mm.
        min_mean_prob: smallest mean needle probability over the piece's pixels (at or
            above ``threshold``) of a reported needle, or None: not checked. A model's
            card carries the limit measured on its training frames (ultrasound: the
            0.5th percentile of its own reported needles), so a short, faint piece that
            the model itself is unsure of is not a needle.
    """

    threshold: float = 0.5
    min_length_mm: float = MIN_NEEDLE_LENGTH_MM
    max_scatter_mm: float = 0.45
    max_scatter_px: float = 1.4
    band_mm: float = 1.5
    min_collinear: float = 0.5
    max_flank_asymmetry: float | None = None
    flank_mm: tuple[float, float] = (1.5, 3.0)
    min_mean_prob: float | None = None

    @classmethod
    def for_model(cls, limits: Mapping[str, Any], **changes: Any) -> NeedleRule:
        """The rule the live loop and ``guidance eval`` apply to a model's output.

        ``limits`` are the model card's ``needle_rule``: limits measured on that model's
        training frames when it was trained. A CT model carries ``max_flank_asymmetry``
        (in a CT slice the needle is the densest thing in the picture, so a thin bright
        line with different tissue on its two sides is a bone plate, not a needle);
        ultrasound (the needle's shadow and reverberations lie on one side) and
        fluoroscopy (a projection: the needle crosses bone edges along its length)
        models carry none. An ultrasound model carries ``min_mean_prob`` (the
        0.5th percentile of the mean probability of its own reported needles on its
        training frames: short faint pieces on bright specular lines fall below it).

        Args:
            limits: field -> value from the card (``{}``: the default rule).
            changes: fields to set on top (e.g. ``threshold`` from the configuration);
                they do not override the card's limits.

        Returns:
            The rule.

        Raises:
            ValueError: a limit that is not a field of the rule, or an invalid value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(limits) - names)
        if unknown:
            raise ValueError(f"model card needle_rule: unknown field(s) {unknown}")
        return cls(**{**changes, **limits})

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not 0.0 <= self.min_collinear <= 1.0:
            raise ValueError(f"min_collinear must be in [0, 1], got {self.min_collinear!r}")
        for name in ("min_length_mm", "max_scatter_mm", "max_scatter_px", "band_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        q = self.min_mean_prob
        if q is not None and not (isinstance(q, (int, float)) and 0.0 <= q < 1.0):
            raise ValueError(f"min_mean_prob must be in [0, 1) or None, got {q!r}")
        a = self.max_flank_asymmetry
        if a is not None and not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0):
            raise ValueError(f"max_flank_asymmetry must be a positive number or None, got {a!r}")
        f = self.flank_mm
        if not (isinstance(f, tuple) and len(f) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in f)
                and 0 < f[0] <= f[1]):
            raise ValueError(f"flank_mm must be (near, far) mm with 0 < near <= far, got {f!r}")


@dataclass(frozen=True)
class NeedleEvidence:
    """What a probability map says about the needle, and whether it is reported.

    Attributes:
        needle: the reported needle (pixel coordinates of the map), or None.
        candidate: the fitted line of the strongest piece even when not reported
            (None when there is no piece at all).
        length_mm: the candidate's visible length, mm (0 without a candidate).
        scatter_mm: RMS perpendicular distance of its pixels from its axis, mm.
        collinear: share of all needle evidence within the band around its axis.
        reason: why nothing is reported (``""`` when a needle is reported).
        flank_asymmetry: :func:`flank_asymmetry` of the candidate (NaN: not checked,
            because the rule does not or an earlier check already failed).
    """

    needle: NeedleDetection | None
    candidate: NeedleDetection | None
    length_mm: float
    scatter_mm: float
    collinear: float
    reason: str
    flank_asymmetry: float = math.nan


def _strongest_piece(prob: npt.NDArray[np.floating], threshold: float, min_pixels: int,
                     hub_hint_ij: npt.ArrayLike | None,
                     band_px: float) -> tuple[NeedleDetection, float, float] | None:
    """The line of the piece with the most probability mass: (line, scatter px,
    collinear share), or None when there is no piece of ``min_pixels``."""
    if prob.ndim != 2:
        raise ValueError(f"prob must be 2D (rows, cols), got shape {prob.shape}")
    mask = (prob >= threshold).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_pixels) + 1
    if big.size == 0:
        return None
    mass = np.bincount(lab.ravel(), weights=prob.ravel().astype(np.float64), minlength=n)
    k = int(big[np.argmax(mass[big])])
    rr, cc = np.nonzero(lab == k)
    w = prob[rr, cc].astype(np.float64)
    pts = np.stack([cc, rr], axis=1).astype(np.float64)
    centre = (pts * w[:, None]).sum(0) / w.sum()
    d = pts - centre
    cov = (d * w[:, None]).T @ d / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    u, normal = evecs[:, 1], evecs[:, 0]
    t = d @ u
    t0, t1 = float(t.min()), float(t.max())
    length = t1 - t0
    a, b = centre + t0 * u, centre + t1 * u
    hub, tip = orient_ends(a, b, prob.shape, hub_hint_ij)
    axis = (tip - hub) / max(length, 1e-9)
    straight = 1.0 - float(np.sqrt(max(evals[0], 0.0) / max(evals[1], 1e-12)))
    conf = float(np.clip(w.mean() * straight, 0.0, 1.0))
    scatter = math.sqrt(max(float(evals[0]), 0.0))
    ar, ac = np.nonzero(mask)
    aw = prob[ar, ac].astype(np.float64)
    dist = np.abs((np.stack([ac, ar], axis=1) - centre) @ normal)
    collinear = float(aw[dist <= band_px].sum() / max(aw.sum(), 1e-12))
    det = NeedleDetection(tip, hub, axis, length, int(rr.size), float(w.mean()), conf)
    return det, scatter, collinear


def _sample(image: npt.NDArray[np.float32], pts: F64) -> npt.NDArray[np.float32]:
    """Bilinear samples of ``image`` at (N, 2) (col, row) points (edges replicated)."""
    mx = np.ascontiguousarray(pts[:, 0], dtype=np.float32).reshape(-1, 1)
    my = np.ascontiguousarray(pts[:, 1], dtype=np.float32).reshape(-1, 1)
    out = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(out, np.float32).ravel()


def flank_asymmetry(
    image: npt.NDArray[np.floating],
    line: NeedleDetection,
    spacing_mm: float,
    flank_mm: tuple[float, float] = (1.5, 3.0),
) -> float:
    """How unlike the two sides of a bright line are, relative to the line's contrast.

    Along the line from hub to tip (1 px steps) the centre value ``c`` is the largest of
    the samples on the line and 1 px to either side (a fit half a pixel off still finds
    the ridge); each flank is the mean of 4 samples between ``flank_mm[0]`` and
    ``flank_mm[1]`` from the axis on that side. With medians along the line::

        asymmetry = |median(left - right)| / median(c - (left + right) / 2)

    About 0 for a needle in tissue (alike on both sides, whatever it crosses on the way
    is crossed by both flanks); large for an edge or a plate between two tissues (the
    skull's inner table: bone on one side, brain on the other). ``inf`` when the line is
    not brighter than its flanks.

    Args:
        image: (R, C) image the line was found on (model input, needle bright).
        line: the fitted line, pixels of ``image``.
        spacing_mm: pixel spacing of ``image``, mm (positive, finite).
        flank_mm: (near, far) flank distance from the axis, mm.

    Returns:
        The asymmetry, >= 0 (or inf).

    Raises:
        ValueError: ``image`` is not 2D or the spacing is not positive.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2D (rows, cols), got shape {image.shape}")
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    img = np.asarray(image, np.float32)
    a = np.asarray(line.hub_ij, np.float64)
    d = np.asarray(line.tip_ij, np.float64) - a
    length = float(np.hypot(d[0], d[1]))
    if length < 1.0:
        return math.inf
    u = d / length
    normal = np.array([-u[1], u[0]])
    pts = a[None, :] + np.arange(0.0, length + 1e-9, 1.0)[:, None] * u[None, :]
    dist = np.linspace(flank_mm[0], flank_mm[1], 4) / spacing_mm
    # Offsets across the line, px: the ridge (-1, 0, 1), then the left and right flanks;
    # all sampled in one call, one row per offset.
    across = np.concatenate([[-1.0, 0.0, 1.0], dist, -dist])
    grid = pts[None, :, :] + across[:, None, None] * normal[None, None, :]
    s = _sample(img, grid.reshape(-1, 2)).reshape(across.size, len(pts))
    centre, left, right = s[:3].max(0), s[3:7].mean(0), s[7:].mean(0)
    contrast = float(np.median(centre - 0.5 * (left + right)))
    if contrast <= 0.0:
        return math.inf
    return abs(float(np.median(left - right))) / contrast


def needle_evidence(
    needle_prob: npt.NDArray[np.floating],
    spacing_mm: float,
    nominal_spacing_mm: float,
    rule: NeedleRule | None = None,
    hub_hint_ij: npt.ArrayLike | None = None,
    image: npt.NDArray[np.floating] | None = None,
) -> NeedleEvidence:
    """Apply :class:`NeedleRule` to a segmentation's needle probability map.

    Args:
        needle_prob: (R, C) needle probability on the model grid.
        spacing_mm: model-grid spacing of this frame, mm/pixel (NaN: unknown; then
            ``nominal_spacing_mm`` is used).
        nominal_spacing_mm: the model's nominal grid spacing, mm/pixel.
        rule: the limits (default :class:`NeedleRule`).
        hub_hint_ij: (2,) (col, row) hub-side point on the model grid, or None.
        image: (R, C) the model input the map was computed from (normalised, model
            grid); needed when the rule checks ``max_flank_asymmetry``.

    Returns:
        The evidence with the reported needle (model-grid pixels) or the reason for none.

    Raises:
        ValueError: the map is not 2D; the rule checks the flanks but no image (or one of
            another shape) was given.
    """
    rule = rule or NeedleRule()
    if rule.max_flank_asymmetry is not None and (image is None
                                                 or image.shape != needle_prob.shape):
        raise ValueError("the needle rule checks flank asymmetry: pass the model input image "
                         f"of the map's shape {needle_prob.shape} (got "
                         f"{None if image is None else image.shape})")
    sp = spacing_mm if math.isfinite(spacing_mm) and spacing_mm > 0 else nominal_spacing_mm
    piece = _strongest_piece(needle_prob, rule.threshold, 12, hub_hint_ij,
                             max(rule.band_mm / sp, 3.0))
    if piece is None:
        return NeedleEvidence(None, None, 0.0, 0.0, 0.0, "no needle evidence")
    det, scatter_px, collinear = piece
    length_mm, scatter_mm = det.length_px * sp, scatter_px * sp
    max_scatter = max(rule.max_scatter_mm, rule.max_scatter_px * nominal_spacing_mm)
    reason = ""
    if det.length_px < max(4.0, rule.min_length_mm / sp):
        reason = f"needle piece {length_mm:.1f} mm shorter than {rule.min_length_mm:g} mm"
    elif scatter_mm > max_scatter:
        reason = (f"needle evidence not straight (scatter {scatter_mm:.2f} mm about its "
                  f"axis > {max_scatter:.2f} mm)")
    elif collinear < rule.min_collinear:
        reason = (f"needle evidence scattered (only {collinear:.0%} on one line, "
                  f"< {rule.min_collinear:.0%})")
    elif rule.min_mean_prob is not None and det.score < rule.min_mean_prob:
        reason = (f"needle evidence faint (mean probability {det.score:.2f} over the piece "
                  f"< {rule.min_mean_prob:.2f})")
    asym = math.nan
    if not reason and rule.max_flank_asymmetry is not None and image is not None:
        asym = flank_asymmetry(image, det, sp, rule.flank_mm)
        if not asym <= rule.max_flank_asymmetry:
            reason = (f"needle evidence is an edge, not a line (its two sides differ by "
                      f"{asym:.2f} of its contrast > {rule.max_flank_asymmetry:.2f})")
    return NeedleEvidence(None if reason else det, det, length_mm, scatter_mm, collinear,
                          reason, asym)
