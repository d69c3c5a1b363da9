"""Warnings from the anatomy the model sees in an ultrasound frame: nerves and vessels.

On ultrasound the danger is not far from the plan: it is the needle touching or
entering a nerve (intraneural injection) or a vessel (intravascular injection). The US
model segments nerves and vessels; this check turns them, frame by frame, into findings
of the one safety decision (:class:`~guidance.safety.decision.SafetyDecision`), in the
image plane, in millimetres:

* every connected component of the model's ``nerve`` and ``vessel`` classes, with its
  mean probability (components below ``min_probability`` or ``min_area_mm2`` ignored);
* the signed distance from the needle tip to each (negative inside), and along the
  path ahead (the needle's line extended by ``look_ahead_mm``);
* findings: tip within ``nerve_caution_mm`` of a nerve -> CAUTION; tip touching or
  inside a nerve (``nerve_contact_mm``) -> DANGER "intraneural risk"; a vessel on the
  path ahead within the look-ahead -> CAUTION; tip inside a vessel -> DANGER
  "intravascular risk".

Persistence and confidence: a level rises only when seen on ``rise_frames``
consecutive frames (a gap of more than ``max_gap_s`` restarts the count), and falls
only after ``clear_frames`` consecutive frames below it with the distance clear of its
threshold by ``hysteresis_mm``: one noisy frame neither raises nor clears a DANGER, and
a true DANGER is shown on its ``rise_frames``-th frame (2 by default: one frame late,
67 ms at 15 fps).

Defaults and their sources (regional anaesthesia; the millimetre values are this
project's choices, informed by, not validated in, these):

* Intraneural needle placement and injection are associated with nerve injury, and
  needle-nerve contact is not reliably felt: Hadzic et al., Reg Anesth Pain Med 2004;
  29:417-423; Bigeleisen, Anesthesiology 2006;105:779-783; Neal et al., "The Second
  ASRA Practice Advisory on Neurologic Complications Associated With Regional
  Anesthesia and Pain Medicine", Reg Anesth Pain Med 2015;40:401-430. Hence DANGER on
  contact (0.5 mm: about three pixels of the model's 0.175 mm grid, the segmentation's
  edge uncertainty) and CAUTION within 2 mm (the needle's tip on approach).
* Intravascular injection is the main cause of local anaesthetic systemic toxicity,
  and ultrasound guidance reduces it by showing the vessels on the path: Neal et al.,
  "The Third ASRA Practice Advisory on Local Anesthetic Systemic Toxicity", Reg Anesth
  Pain Med 2018;43:113-123. Hence CAUTION for a vessel within 1 mm of the path ahead
  (10 mm: about two seconds of advance at 5 mm/s) and DANGER with the tip inside one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from guidance.io.config_schema import check_fields, require_order, setting
from guidance.records import SafetyReason, SafetyWarning, WarningLevel
from guidance.safety.decision import Clearance

__all__ = ["ImageAnatomyCheck", "ImageAnatomyConfig", "ImageAnatomyResult", "ImageStructure"]

F64 = npt.NDArray[np.float64]

#: Class ids of the US model's card (``labels``: background, needle, nerve, vessel).
CLASSES = {"nerve": 2, "vessel": 3}
#: The names the findings carry (the structure of the decision).
NAMES = {"nerve": "nerve (US)", "vessel": "vessel (US)"}


@dataclass(frozen=True)
class ImageAnatomyConfig:
    """Thresholds of the image-anatomy check (mm in the image plane, frames, s); each
    field documents itself (``setting(doc=...)``). The checks are the safety section's
    (:func:`guidance.io.config_schema.check_fields`, ``require_order``)."""

    nerve_caution_mm: float = setting(
        2.0, "tip within this of a nerve: CAUTION", unit="mm", ge=0, le=20)
    nerve_contact_mm: float = setting(
        0.5, "tip within this of a nerve (or inside): DANGER, intraneural risk", unit="mm",
        ge=0, le=20)
    vessel_ahead_mm: float = setting(
        1.0, "a vessel within this of the path ahead: CAUTION", unit="mm", ge=0, le=20)
    look_ahead_mm: float = setting(
        10.0, "how far the path ahead reaches beyond the tip", unit="mm", ge=0, le=100)
    min_probability: float = setting(
        0.6, "a component counts when its mean model probability is at least this",
        gt=0, le=1)
    min_area_mm2: float = setting(
        1.0, "components smaller than this are ignored (specks)", unit="mm2", ge=0, le=100)
    rise_frames: int = setting(
        2, "consecutive frames a higher level must be seen to be shown (a true DANGER is "
           "never delayed more than 3 frames)", unit="frames", ge=1, le=3)
    clear_frames: int = setting(
        3, "consecutive frames a lower level must hold, clear of the threshold by "
           "hysteresis_mm, to be shown", unit="frames", ge=1, le=3)
    hysteresis_mm: float = setting(
        0.5, "band a distance must clear its threshold by to count towards clear_frames "
             "(about three pixels of the US model's 0.175 mm grid)", unit="mm", ge=0, le=10)
    max_gap_s: float = setting(
        0.5, "frames further apart than this do not count as consecutive", unit="s",
        ge=0, le=10)
    needle_width_mm: float = setting(
        1.0, "components are closed over this width (the needle's own notch) before "
             "distances are measured", unit="mm", ge=0, le=5)

    def __post_init__(self) -> None:
        check_fields(self, "image_anatomy")
        require_order(self, "image_anatomy", "nerve_contact_mm", "nerve_caution_mm")


@dataclass(frozen=True)
class ImageStructure:
    """One nerve or vessel component of one frame.

    Attributes:
        kind: ``nerve`` or ``vessel``.
        probability: mean model probability over the component.
        area_mm2: its area.
        tip_mm: signed distance from the tip (negative inside), mm.
        ahead_mm: smallest distance from the path ahead, mm (inf when the path ahead does
            not come within a few mm of it).
        depth_ahead_mm: how far ahead of the tip the path comes closest, mm.
        centroid_px: (u, v) in frame pixels (where to draw its distance).
        contour_px: (N, 2) its outline in frame pixels.
    """

    kind: str
    probability: float
    area_mm2: float
    tip_mm: float
    ahead_mm: float
    depth_ahead_mm: float
    centroid_px: F64
    contour_px: F64


@dataclass(frozen=True)
class ImageAnatomyResult:
    """What the check found on one frame.

    Attributes:
        findings: the warnings shown (after persistence), worst first.
        clearances: the closest nerve and the closest vessel, as the decision's
            clearances (structure ``nerve (US)`` / ``vessel (US)``).
        structures: every component counted.
        raw: the level each class would have on this frame alone.
        depth_to_breach_mm: along the needle's line from the tip to where it comes within
            ``vessel_ahead_mm`` of a vessel or ``nerve_contact_mm`` of a nerve, mm (inf:
            not within the look-ahead).
        breach_structure: which (``vessel (US)``, ``nerve (US)``; "" none).
    """

    findings: tuple[SafetyWarning, ...]
    clearances: tuple[Clearance, ...]
    structures: tuple[ImageStructure, ...]
    raw: dict[str, WarningLevel] = field(default_factory=dict)
    depth_to_breach_mm: float = math.inf
    breach_structure: str = ""


_RISING = (WarningLevel.CAUTION, WarningLevel.DANGER)


@dataclass
class _ClassState:
    """Persistence of one class: what is shown, and the runs of frames that would
    change it."""

    shown: WarningLevel = WarningLevel.NONE
    #: consecutive frames with the raw level at or above CAUTION / DANGER.
    run_ge: dict[WarningLevel, int] = field(
        default_factory=lambda: dict.fromkeys(_RISING, 0))
    #: consecutive frames below ``shown`` and clear of its threshold, and the highest
    #: raw level among them (what the level falls to).
    clear_run: int = 0
    clear_max: WarningLevel = WarningLevel.NONE
    last_t: float = -math.inf


class ImageAnatomyCheck:
    """The per-frame check with its persistence state (one per live loop; not
    thread-safe)."""

    def __init__(self, config: ImageAnatomyConfig | None = None) -> None:
        self.config = config or ImageAnatomyConfig()
        self._state = {k: _ClassState() for k in CLASSES}

    def reset(self) -> None:
        """Forget the persistence state (a new needle pass, a new probe position)."""
        self._state = {k: _ClassState() for k in CLASSES}

    # -- geometry --------------------------------------------------------------------

    def structures(self, probs: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8],
                   spacing_mm: float, tip_ij: F64, axis_ij: F64,
                   to_frame: Any) -> list[ImageStructure]:
        """Components of the nerve and vessel classes and their distances.

        Args:
            probs: (n_classes, R, C) model probabilities (model grid).
            labels: (R, C) arg-max labels (model grid), the part covering the frame.
            spacing_mm: model-grid pixel size, mm.
            tip_ij: (2,) needle tip (column, row) on the model grid.
            axis_ij: (2,) unit direction hub -> tip on the model grid.
            to_frame: maps (N, 2) model-grid (column, row) to frame pixels.
        """
        c = self.config
        rows, cols = labels.shape
        min_px = c.min_area_mm2 / (spacing_mm * spacing_mm)
        n_ahead = max(2, math.ceil(c.look_ahead_mm / (0.5 * spacing_mm)))
        s = np.linspace(0.0, c.look_ahead_mm / spacing_mm, n_ahead)
        ahead = tip_ij[None, :] + s[:, None] * axis_ij[None, :]
        inside_grid = ((ahead[:, 0] >= 0) & (ahead[:, 0] <= cols - 1) & (ahead[:, 1] >= 0)
                       & (ahead[:, 1] <= rows - 1))
        near_px = (max(c.vessel_ahead_mm, c.nerve_caution_mm) + c.hysteresis_mm + 2.0) \
            / spacing_mm
        ahead, s_in = ahead[inside_grid], s[inside_grid]
        out: list[ImageStructure] = []
        for kind, cls in CLASSES.items():
            mask = (labels == cls).view(np.uint8)
            # Outer contours, not connected-component labelling: 15 us against ~0.5 ms
            # for a 256 x 256 grid on this kind of CPU.
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for cnt in contours:
                if cv2.contourArea(cnt) + 0.5 * len(cnt) < min_px:  # ~ its pixel count
                    continue
                x0, y0, w, h = cv2.boundingRect(cnt)
                filled = np.zeros((h, w), np.uint8)
                cv2.drawContours(filled, [cnt - np.array([x0, y0], np.int32)], -1, 1, -1)
                one = filled.astype(bool) & (labels[y0:y0 + h, x0:x0 + w] == cls)
                area = int(one.sum())
                if area < min_px:
                    continue
                prob = float(probs[cls, y0:y0 + h, x0:x0 + w][one].mean())
                if prob < c.min_probability:
                    continue
                contour = _outline(_closed(one, c.needle_width_mm / spacing_mm), (x0, y0))
                near = ((ahead[:, 0] >= x0 - near_px) & (ahead[:, 0] <= x0 + w + near_px)
                        & (ahead[:, 1] >= y0 - near_px) & (ahead[:, 1] <= y0 + h + near_px))
                tip_mm, ahead_mm, depth = _distances(contour, tip_ij, ahead[near], s_in[near],
                                                     spacing_mm)
                ys, xs = np.nonzero(one)
                centroid = np.array([[xs.mean() + x0, ys.mean() + y0]])
                out.append(ImageStructure(
                    kind, prob, area * spacing_mm * spacing_mm, tip_mm, ahead_mm, depth,
                    np.asarray(to_frame(centroid), float)[0],
                    np.asarray(to_frame(contour), float)))
        return out

    # -- levels and persistence --------------------------------------------------------

    def _raw(self, kind: str, items: list[ImageStructure]) -> tuple[WarningLevel, float]:
        """The level of one class on this frame alone, and the distance that sets it."""
        c = self.config
        if not items:
            return WarningLevel.NONE, math.inf
        tip = min(i.tip_mm for i in items)
        if kind == "nerve":
            if tip <= c.nerve_contact_mm:
                return WarningLevel.DANGER, tip
            if tip <= c.nerve_caution_mm:
                return WarningLevel.CAUTION, tip
            return WarningLevel.NONE, tip
        if tip <= 0.0:
            return WarningLevel.DANGER, tip
        ahead = min(i.ahead_mm for i in items)
        if ahead <= c.vessel_ahead_mm:
            return WarningLevel.CAUTION, ahead
        return WarningLevel.NONE, tip

    def _clear_of(self, kind: str, level: WarningLevel, items: list[ImageStructure]) -> bool:
        """The distance is clear of ``level``'s threshold by the hysteresis."""
        c = self.config
        if not items:
            return True
        h = c.hysteresis_mm
        tip = min(i.tip_mm for i in items)
        if kind == "nerve":
            limit = c.nerve_contact_mm if level == WarningLevel.DANGER else c.nerve_caution_mm
            return tip > limit + h
        if level == WarningLevel.DANGER:
            return tip > h
        return min(i.ahead_mm for i in items) > c.vessel_ahead_mm + h

    def _persist(self, kind: str, raw: WarningLevel, items: list[ImageStructure],
                 t_s: float) -> WarningLevel:
        """The level shown after this frame: raised to the highest level seen on
        ``rise_frames`` consecutive frames; lowered after ``clear_frames`` consecutive
        frames below it (clear of its threshold by the hysteresis), to the highest level
        among those frames."""
        c = self.config
        st = self._state[kind]
        if t_s - st.last_t > c.max_gap_s:  # not consecutive: start the runs again
            st.run_ge = dict.fromkeys(_RISING, 0)
            st.clear_run = 0
        st.last_t = t_s
        for level in _RISING:
            st.run_ge[level] = st.run_ge[level] + 1 if raw >= level else 0
        risen = max((lv for lv in _RISING if st.run_ge[lv] >= c.rise_frames),
                    default=WarningLevel.NONE)
        if risen > st.shown:
            st.shown, st.clear_run = risen, 0
        elif raw < st.shown and self._clear_of(kind, st.shown, items):
            st.clear_max = raw if st.clear_run == 0 else max(st.clear_max, raw)
            st.clear_run += 1
            if st.clear_run >= c.clear_frames:
                st.shown, st.clear_run = max(st.clear_max, risen), 0
        else:
            st.clear_run = 0
        return st.shown

    def check(self, probs: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8],
              spacing_mm: float, tip_ij: F64, axis_ij: F64, to_frame: Any,
              t_s: float) -> ImageAnatomyResult:
        """One frame: components, distances, the levels after persistence.

        Args: see :meth:`structures`; ``t_s``: the frame's time, s (local clock).
        """
        found = self.structures(probs, labels, spacing_mm, tip_ij, axis_ij, to_frame)
        return self.decide(found, t_s)

    def decide(self, found: list[ImageStructure], t_s: float) -> ImageAnatomyResult:
        """Levels (with persistence) and findings from this frame's components."""
        c = self.config
        findings: list[SafetyWarning] = []
        clearances: list[Clearance] = []
        raws: dict[str, WarningLevel] = {}
        for kind in CLASSES:
            items = [f for f in found if f.kind == kind]
            raw, _dist = self._raw(kind, items)
            raws[kind] = raw
            shown = self._persist(kind, raw, items, t_s)
            name = NAMES[kind]
            margin = c.nerve_caution_mm if kind == "nerve" else c.vessel_ahead_mm
            if items:
                nearest = min(items, key=lambda i: i.tip_mm)
                clearances.append(Clearance(name, nearest.tip_mm, margin))
            if shown == WarningLevel.NONE:
                continue
            findings.append(self._finding(kind, shown, items, t_s))
        findings.sort(key=lambda w: -int(w.level))
        clearances.sort(key=lambda cl: cl.clearance_mm)
        limit = {"vessel": c.vessel_ahead_mm, "nerve": c.nerve_contact_mm}
        breaches = [(f.depth_ahead_mm, NAMES[f.kind]) for f in found
                    if f.ahead_mm <= limit[f.kind] and math.isfinite(f.depth_ahead_mm)]
        depth, which = min(breaches, default=(math.inf, ""))
        return ImageAnatomyResult(tuple(findings), tuple(clearances), tuple(found), raws,
                                  depth, which)

    def _finding(self, kind: str, level: WarningLevel, items: list[ImageStructure],
                 t_s: float) -> SafetyWarning:
        c = self.config
        name = NAMES[kind]
        if not items:  # shown by persistence on a frame where it is not seen
            return SafetyWarning(t_s, level, name, math.nan,
                                 f"{name}: {level.name} held (not seen on this frame)",
                                 SafetyReason.NEAR_STRUCTURE)
        near = min(items, key=lambda i: i.tip_mm)
        p = f"p {near.probability:.2f}"
        if kind == "nerve":
            if level == WarningLevel.DANGER:
                where = "inside" if near.tip_mm < 0 else "touching"
                return SafetyWarning(
                    t_s, level, name, near.tip_mm,
                    f"{name}: tip {where} a nerve ({near.tip_mm:.1f} mm, contact margin "
                    f"{c.nerve_contact_mm:g} mm, {p}): intraneural risk",
                    SafetyReason.INTRANEURAL_RISK, c.nerve_contact_mm)
            return SafetyWarning(
                t_s, level, name, near.tip_mm,
                f"{name}: tip {near.tip_mm:.1f} mm from a nerve (caution within "
                f"{c.nerve_caution_mm:g} mm, {p})", SafetyReason.NEAR_STRUCTURE,
                c.nerve_caution_mm)
        if level == WarningLevel.DANGER:
            return SafetyWarning(
                t_s, level, name, near.tip_mm,
                f"{name}: tip inside a vessel ({near.tip_mm:.1f} mm, {p}): intravascular "
                f"risk", SafetyReason.INTRAVASCULAR_RISK, 0.0)
        ahead = min(items, key=lambda i: i.ahead_mm)
        return SafetyWarning(
            t_s, level, name, ahead.ahead_mm,
            f"{name}: a vessel on the path ahead, {ahead.depth_ahead_mm:.1f} mm ahead of the "
            f"tip ({ahead.ahead_mm:.1f} mm from the line, caution within "
            f"{c.vessel_ahead_mm:g} mm, {p})", SafetyReason.BREACH_AHEAD, c.vessel_ahead_mm)


def _closed(one: npt.NDArray[np.bool_], width_px: float) -> npt.NDArray[np.bool_]:
    """The component closed over ``width_px`` (the needle's notch filled), same box."""
    k = max(3, 2 * round(width_px / 2) + 1)
    pad = k
    padded = np.pad(one.astype(np.uint8), pad)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    return closed.astype(bool) | one


def _outline(mask: npt.NDArray[np.bool_], origin: tuple[int, int]) -> F64:
    """(N, 2) the boundary pixels (column, row) of a component's largest outer contour,
    on the whole grid."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    pts: F64 = max(contours, key=len).reshape(-1, 2).astype(np.float64)
    return pts + origin


def _distances(contour: F64, tip_ij: F64, ahead_ij: F64, ahead_s: F64,
               spacing_mm: float) -> tuple[float, float, float]:
    """(signed tip distance, path-ahead distance, depth of the closest approach), mm, to a
    component given by its boundary pixels.

    The component's edge lies half a pixel outside its boundary pixels' centres: the
    signed distance to the polygon through them (negative inside, ``pointPolygonTest``)
    less half a pixel. The path ahead: the smallest distance of its sample points to the
    boundary pixels, less half a pixel (0 where it enters)."""
    poly = contour.astype(np.float32).reshape(-1, 1, 2)
    inside = cv2.pointPolygonTest(poly, (float(tip_ij[0]), float(tip_ij[1])), True)
    tip_mm = (-float(inside) - 0.5) * spacing_mm
    if len(ahead_ij) == 0:
        return tip_mm, math.inf, math.nan
    diff = ahead_ij[:, None, :] - contour[None, :, :]
    d = np.sqrt(np.min((diff * diff).sum(axis=2), axis=1))
    d = np.maximum(d - 0.5, 0.0) * spacing_mm
    k = int(np.argmin(d))
    return tip_mm, float(d[k]), float(ahead_s[k] * spacing_mm)
