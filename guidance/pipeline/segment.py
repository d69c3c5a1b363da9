"""The segment stage: the modality's model on the frame (or on a focus window around
the last needle tip) and the classical detector beside it as a cross-check.

Split from :mod:`guidance.pipeline.stages` (the stage interface is the same:
``process(item)`` reads and fills a :class:`~guidance.pipeline.frame.WorkItem`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from guidance.pipeline.config import SegmentConfig
from guidance.pipeline.frame import NeedleEstimate2D3D, Reason, WorkItem
from trackers.needle_detect import NeedleDetection, RidgeNeedleDetector
from trackers.needle_fit import NeedleEvidence, NeedleRule, needle_evidence

if TYPE_CHECKING:
    from models.segmenter import Segmentation, Segmenter

__all__ = ["SegmentStage", "angle_deg", "load_segmenters"]

log = logging.getLogger(__name__)
NAN3 = np.full(3, np.nan)
#: The needle's class in every model card (``labels[1] == "needle"``).
NEEDLE_LABEL = 1


def angle_deg(u: npt.NDArray[np.float64], v: npt.NDArray[np.float64]) -> float:
    c = abs(float(u @ v)) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)
    return math.degrees(math.acos(min(1.0, c)))




#: A needle end this close to the focus window's edge (model pixels) may run on beyond it.
_EDGE_PX = 4.0


def _shifted(det: NeedleDetection | None, off: npt.NDArray[np.float64]
             ) -> NeedleDetection | None:
    """A detection moved by ``off`` pixels (column, row); None stays None."""
    if det is None:
        return None
    return dataclasses.replace(det, tip_ij=det.tip_ij + off, hub_ij=det.hub_ij + off)


def _at_window_edge(needle: NeedleDetection, window: tuple[int, int, int, int]) -> bool:
    """Whether the needle's tip reaches the focus window's edge (then the window may not
    hold the whole needle: the whole frame is segmented). ``needle.tip_ij`` is in model
    pixels (column, row)."""
    r0, c0, r1, c1 = window
    c, r = float(needle.tip_ij[0]), float(needle.tip_ij[1])
    return (c - c0 < _EDGE_PX or c1 - 1 - c < _EDGE_PX
            or r - r0 < _EDGE_PX or r1 - 1 - r < _EDGE_PX)


def load_segmenters(config: SegmentConfig, modalities: tuple[str, ...]
                    ) -> tuple[dict[str, Segmenter], dict[str, str]]:
    """Load the model of each modality (at start, never on the frame path).

    Returns:
        (segmenters, errors): loaded models by modality, and why a modality has none.
    """
    from models.card import CardError
    from models.segmenter import Segmenter
    from models.shipped import shipped_card

    found: dict[str, Segmenter] = {}
    errors: dict[str, str] = {}
    if config.model == "none":
        return found, errors
    chain: str | list[str] = (config.backends if config.backends == "auto"
                              else [b.strip() for b in config.backends.split(",")])
    # One explicit card serves every modality: loaded once (per focus window size).
    by_card: dict[tuple[str, int], Segmenter] = {}
    for m in modalities:
        try:
            card = str(shipped_card(m)) if config.model == "auto" else config.model
            focus = config.focus_px if m in config.focus_modalities else 0
            seg = by_card.get((card, focus)) or Segmenter(card, chain=chain,
                                                          threads=config.threads,
                                                          focus_px=focus)
            by_card[(card, focus)] = seg
            if config.model != "auto" and seg.card.modality != m and len(modalities) == 1:
                raise ValueError(f"model {card} is for {seg.card.modality}, not {m}")
            found[m] = seg
        except (CardError, FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
            errors[m] = f"no {m} model: {e}"
            log.warning("segment: %s", errors[m])
    return found, errors


class SegmentStage:
    """Segmentation: the model is the primary segmenter, the classical detector (ridge
    filter + robust line fit) runs beside it as a cross-check.

    With a model the label map is the model's classes (``item.label_names``) resampled
    to the frame's grid, and the needle is the line fitted to the model's needle mask
    when it passes :class:`trackers.needle_fit.NeedleRule` (:meth:`rule`: long enough,
    straight, most of the needle evidence on one line, and where the model's card says
    so (CT) a line, not an edge; the piece's scatter, collinear share and flank
    asymmetry are in ``metrics``). When the classical detector disagrees (tips more
    than ``disagree_tip_mm`` apart or axes more than ``disagree_angle_deg``), the
    needle's confidence is halved, the frame is DEGRADED and the disagreement is
    reported; when only the classical detector sees a needle the model's "no needle"
    stands and the disagreement is reported. Without a model
    (``segment.model = none``, or none loaded) the classical detector alone segments and
    the frame is DEGRADED with the reason.

    Args:
        config: the segment section.
        segmenters: loaded models by modality (see :func:`load_segmenters`).
        load_errors: why a modality has no model, by modality.
    """

    name = "segment"

    def __init__(self, config: SegmentConfig, segmenters: dict[str, Segmenter] | None = None,
                 load_errors: dict[str, str] | None = None) -> None:
        self.config = config
        self._rules: dict[int, NeedleRule] = {}  # by id() of the segmenter
        self.segmenters = dict(segmenters or {})
        self.load_errors = dict(load_errors or {})
        self._detectors: dict[str, RidgeNeedleDetector] = {}
        self._labels: np.ndarray | None = None
        self.hub_hint_ij: npt.NDArray[np.float64] | None = None  # frame pixels
        #: Where the last frame's needle tip was, per modality (frame pixels): the next
        #: frame's focus window is centred there.
        self._focus: dict[str, npt.NDArray[np.float64]] = {}

    def rule(self, seg: Segmenter) -> NeedleRule:
        """The needle rule for a model: the configured limits and the model card's own
        (:meth:`trackers.needle_fit.NeedleRule.for_model`; a CT card adds the flank
        check)."""
        r = self._rules.get(id(seg))
        if r is None:
            c = self.config
            r = self._rules[id(seg)] = NeedleRule.for_model(
                seg.card.needle_rule, threshold=c.needle_threshold,
                min_length_mm=c.min_needle_length_mm, max_scatter_mm=c.needle_max_scatter_mm,
                max_scatter_px=c.needle_max_scatter_px, min_collinear=c.needle_min_collinear)
        return r

    def _classical(self, item: WorkItem,
                   window: tuple[int, int, int, int] | None = None) -> NeedleEstimate2D3D | None:
        """The classical detector on the working grid, or on its ``window`` ``(r0, c0,
        r1, c1)`` (working-grid pixels) only; the estimate in frame pixels."""
        assert item.work is not None
        pol = self.config.polarity
        det = self._detectors.get(pol)
        if det is None:
            det = self._detectors[pol] = RidgeNeedleDetector(
                polarity=pol, sigma_px=self.config.sigma_px,
                min_length_px=self.config.min_length_px)
        s = item.work_scale
        hint = None if self.hub_hint_ij is None else (self.hub_hint_ij + 0.5) / s - 0.5
        work, off = item.work, np.zeros(2)
        if window is not None:
            r0, c0, r1, c1 = window
            work, off = work[r0:r1, c0:c1], np.array([c0, r0], np.float64)
            hint = None if hint is None else hint - off
        found = det.detect(work, hub_hint_ij=hint)
        if found is None:
            return None
        tip = (found.tip_ij + off + 0.5) * s - 0.5
        hub = (found.hub_ij + off + 0.5) * s - 0.5
        return NeedleEstimate2D3D(tip, hub, NAN3, NAN3, found.confidence, "image")

    def _label_buffer(self, rows: int, cols: int) -> np.ndarray:
        if self._labels is None or self._labels.shape != (rows, cols):
            self._labels = np.zeros((rows, cols), np.uint8)
        return self._labels

    def process(self, item: WorkItem) -> None:
        assert item.frame is not None
        vox = item.frame.image.voxels
        rows, cols = vox.shape[1], vox.shape[2]
        labels = self._label_buffer(rows, cols)
        item.labels = labels
        seg = self.segmenters.get(item.modality)
        if seg is not None:
            self._model(item, seg, labels)
            return
        classical = self._classical(item)
        labels.fill(0)
        item.label_names = ("background", "needle")
        if self.config.model != "none":  # configured classical-only is not a failure
            item.add(Reason.MODEL_MISSING, self.load_errors.get(
                item.modality, f"no model for {item.modality or 'this frame'}")
                + ": classical detector only")
        if classical is not None:
            cv2.line(labels, (round(classical.hub_ij[0]), round(classical.hub_ij[1])),
                     (round(classical.tip_ij[0]), round(classical.tip_ij[1])), 1,
                     self.config.label_width_px)
        item.needle = classical

    @staticmethod
    def _window_edges(res: Segmentation) -> npt.NDArray[np.float64]:
        """The focus window's outer edges in frame pixel coordinates: (2, 2), the
        top-left and the bottom-right corner's (column, row)."""
        assert res.window is not None
        r0, c0, r1, c1 = res.window
        return res.grid.to_frame_ij(np.array([[c0 - 0.5, r0 - 0.5], [c1 - 0.5, r1 - 0.5]]))

    @staticmethod
    def _frame_window(edges: npt.NDArray[np.float64], frame_shape: tuple[int, int]
                      ) -> tuple[int, int, int, int]:
        """The focus window in frame pixels ``(x0, y0, x1, y1)``, end exclusive."""
        a, b = edges + 0.5
        rows, cols = frame_shape
        return (int(max(0, round(a[0]))), int(max(0, round(a[1]))),
                int(min(cols, round(b[0]))), int(min(rows, round(b[1]))))

    @staticmethod
    def _work_window(edges: npt.NDArray[np.float64], work_scale: float,
                     work_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """The focus window on the working grid (the classical detector's), ``(r0, c0,
        r1, c1)``."""
        w = (edges + 0.5) / work_scale - 0.5
        rows, cols = work_shape
        a = np.clip(np.floor(w[0]).astype(int), 0, [cols, rows])
        b = np.clip(np.ceil(w[1]).astype(int), 0, [cols, rows])
        return int(a[1]), int(a[0]), int(b[1]), int(b[0])

    def _model(self, item: WorkItem, seg: Segmenter, labels: np.ndarray) -> None:
        assert item.frame is not None
        img = item.frame.image
        plane = img.voxels[img.voxels.shape[0] // 2]
        spacing = float(img.spacing_mm[0])
        focus = self._focus.pop(item.modality, None) if seg.focus_px else None
        res, ev = self._evidence(seg, plane, spacing, focus)
        if res.window is not None:
            item.metrics["segment_focus"] = 1.0
            if ev.needle is None or _at_window_edge(ev.needle, res.window):
                # No needle in the window, or it runs out of it: the whole frame decides.
                infer_ms = res.infer_ms
                res, ev = self._evidence(seg, plane, spacing, None)
                item.metrics["segment_focus"] = 0.0
                item.metrics["segment_focus_miss"] = 1.0
                item.metrics["segment_focus_infer_ms"] = infer_ms
        if res.window is not None:
            # The window shows anatomy cut at its edges: only the needle is reported
            # from it (the model's other classes need the whole frame).
            np.putmask(res.labels, res.labels != NEEDLE_LABEL, 0)
            edges = self._window_edges(res)
            item.focus_window = self._frame_window(edges, res.grid.frame_shape)
        res.grid.labels_to_frame(res.labels, out=labels)
        item.segmentation = res
        item.label_names = seg.card.labels
        item.metrics["segment_infer_ms"] = res.infer_ms
        classical = None
        if self.config.crosscheck:
            work_window = None
            if res.window is not None and item.work is not None:
                work_window = self._work_window(edges, item.work_scale, item.work.shape)
            classical = self._classical(item, work_window)
        if seg.degraded:
            item.add(Reason.BACKEND_FALLBACK, f"segmentation backend: {seg.degraded_reason}")
        if not res.spacing_ok:
            lo, hi = seg.card.spacing_range_mm
            item.add(Reason.SPACING_OUT_OF_RANGE,
                     f"frame spacing {res.grid.model_spacing_mm:.3f} mm/px on the model grid is "
                     f"outside the {seg.card.name} training range {lo:.3f}-{hi:.3f}")
        found = ev.needle
        if ev.candidate is not None:
            item.metrics["needle_scatter_mm"] = ev.scatter_mm
            item.metrics["needle_collinear"] = ev.collinear
            if not math.isnan(ev.flank_asymmetry):
                item.metrics["needle_flank_asymmetry"] = ev.flank_asymmetry
        model = None
        if found is not None:
            model = NeedleEstimate2D3D(res.grid.to_frame_ij(found.tip_ij),
                                       res.grid.to_frame_ij(found.hub_ij), NAN3, NAN3,
                                       found.confidence, "image")
        item.needle = self._crosscheck(item, model, classical, spacing)
        if model is not None and seg.focus_px:
            self._focus[item.modality] = model.tip_ij

    def _evidence(self, seg: Segmenter, plane: np.ndarray, spacing: float,
                  focus: npt.NDArray[np.float64] | None) -> tuple[Segmentation, NeedleEvidence]:
        """The model on the frame (or its focus window around ``focus``, frame pixels)
        and the needle evidence in its output."""
        res = seg.segment(plane, spacing, focus)
        hint = None if self.hub_hint_ij is None else res.grid.to_model_ij(self.hub_hint_ij)
        prob, image = res.probs[1], res.image
        if res.window is None:
            return res, needle_evidence(prob, res.grid.model_spacing_mm,
                                        seg.card.pixel_spacing_mm, self.rule(seg), hint, image)
        # Only the window was looked at: the evidence is found there (the rest of the
        # map is background), and placed back on the whole grid.
        r0, c0, r1, c1 = res.window
        off = np.array([c0, r0], np.float64)
        ev = needle_evidence(prob[r0:r1, c0:c1], res.grid.model_spacing_mm,
                             seg.card.pixel_spacing_mm, self.rule(seg),
                             None if hint is None else hint - off, image[r0:r1, c0:c1])
        return res, dataclasses.replace(
            ev, needle=_shifted(ev.needle, off), candidate=_shifted(ev.candidate, off))

    def _crosscheck(self, item: WorkItem, model: NeedleEstimate2D3D | None,
                    classical: NeedleEstimate2D3D | None,
                    spacing_mm: float) -> NeedleEstimate2D3D | None:
        if not self.config.crosscheck:
            return model
        if model is None:
            if classical is not None:
                t = classical.tip_ij
                item.add(Reason.CLASSICAL_ONLY_NEEDLE,
                         f"cross-check: the classical detector sees a needle (tip at pixel "
                         f"{t[0]:.0f}, {t[1]:.0f}) that the model does not")
                item.metrics["crosscheck_agree"] = 0.0
            return None
        if classical is None:
            item.metrics["crosscheck_agree"] = 0.5  # not confirmed
            return dataclasses.replace(
                model, confidence=model.confidence * self.config.unconfirmed_confidence_scale)
        sp = spacing_mm if math.isfinite(spacing_mm) and spacing_mm > 0 else 1.0
        d_mm = float(np.linalg.norm(model.tip_ij - classical.tip_ij)) * sp
        ang = angle_deg(model.tip_ij - model.hub_ij, classical.tip_ij - classical.hub_ij)
        item.metrics["crosscheck_tip_mm"] = d_mm
        item.metrics["crosscheck_angle_deg"] = ang
        if d_mm > self.config.disagree_tip_mm or ang > self.config.disagree_angle_deg:
            item.metrics["crosscheck_agree"] = 0.0
            item.add(Reason.DETECTORS_DISAGREE,
                     f"cross-check: model and classical detector disagree (tips {d_mm:.1f} mm "
                     f"apart, axes {ang:.1f} deg)")
            return dataclasses.replace(
                model, confidence=model.confidence * self.config.disagree_confidence_scale)
        item.metrics["crosscheck_agree"] = 1.0
        return model
