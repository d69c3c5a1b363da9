"""Typed results of one CT control scan (a slab of contiguous axial slices).

Frames (DESIGN.md): a slab's voxels map through ``ImageVolume.ijk_to_lps`` to the
*scanner's* patient coordinates at the time of the control scan (LPS mm, from the IMAGE
message's ijk -> RAS matrix). The planning CT was acquired on the same scanner, so both
share that frame as long as the patient has not moved; :class:`PatientMotion` is the
rigid ``slab_to_ct`` transform found by registration (identity without motion).
Everything the safety check and the radiologist see is in the planning CT's LPS frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.safety.decision import SafetyDecision

__all__ = ["CtScanResult", "PatientMotion", "SlabError", "SlabNeedle"]

F64 = npt.NDArray[np.float64]
_NAN3 = np.full(3, np.nan)


class SlabError(ValueError):
    """A slab the control-scan path refuses (one slice, a non-invertible matrix, NaN
    spacing, too many slices, not a CT): the message names what and where."""


def _num(v: float, nd: int = 2) -> float | None:
    return round(float(v), nd) if math.isfinite(v) else None


def _vec(v: F64, nd: int = 2) -> list[float] | None:
    return [round(float(x), nd) for x in v] if np.all(np.isfinite(v)) else None


@dataclass(frozen=True, eq=False)
class SlabNeedle:
    """The needle found in one slab, in the slab's (scanner's) LPS frame.

    Attributes:
        found: a needle was seen in the slab.
        tip_lps: (3,) the deepest end of the needle seen, mm (NaN when not found). When
            ``tip_in_slab`` is False it is where the needle *leaves* the slab, not the tip.
        axis_lps: (3,) unit hub -> tip direction (NaN when not found).
        hub_lps: (3,) the outermost point of the needle seen in the slab, mm.
        tip_in_slab: the tip lies inside the slab (False: the needle leaves the slab
            through its first or last slice going deeper: the tip is beyond it).
        end_slice: slice index k (0-based, the slab's k axis) where the needle's
            evidence ends deepest (-1 when not found).
        tip_sigma_mm: 1-sigma localisation uncertainty of the tip along the axis, mm.
        n_voxels: voxels of needle evidence used by the line fit (inliers).
        rms_mm: RMS distance of the inliers from the fitted line, mm.
        confidence: [0, 1], mean needle probability of the inliers.
        slices_crossed: how many slices hold needle evidence on the line.
        message: one line for the console and the banner ("tip beyond the slab, needle
            ends at slice 4 of 5", "no needle in the slab", ...).
    """

    found: bool
    tip_lps: F64 = field(default_factory=lambda: _NAN3.copy())
    axis_lps: F64 = field(default_factory=lambda: _NAN3.copy())
    hub_lps: F64 = field(default_factory=lambda: _NAN3.copy())
    tip_in_slab: bool = False
    end_slice: int = -1
    tip_sigma_mm: float = math.nan
    n_voxels: int = 0
    rms_mm: float = math.nan
    confidence: float = 0.0
    slices_crossed: int = 0
    message: str = "no needle in the slab"

    def to_json(self) -> dict[str, object]:
        return {"found": bool(self.found), "tip_lps": _vec(self.tip_lps),
                "axis_lps": _vec(self.axis_lps, 4), "hub_lps": _vec(self.hub_lps),
                "tip_in_slab": bool(self.tip_in_slab), "end_slice": int(self.end_slice),
                "tip_sigma_mm": _num(self.tip_sigma_mm), "n_voxels": self.n_voxels,
                "rms_mm": _num(self.rms_mm), "confidence": _num(self.confidence, 3),
                "slices_crossed": self.slices_crossed, "message": self.message}


@dataclass(frozen=True, eq=False)
class PatientMotion:
    """The patient's rigid motion between the planning CT and a control slab.

    Attributes:
        slab_to_ct: (4, 4) the slab's (scanner's) LPS mm -> the planning CT's LPS mm.
        translation_mm: how far the slab's centre moved, mm (|displacement| of the slab
            centre under ``slab_to_ct``).
        rotation_deg: rotation angle of ``slab_to_ct``, degrees.
        ok: the registration converged and is unambiguous.
        reason: why not ok ("" when ok).
        metric: final registration metric (lower is better; NaN unknown).
        iterations: optimiser iterations.
        ms: registration time, ms.
        method: what registered (library, transform, metric), one line.
    """

    slab_to_ct: F64
    translation_mm: float
    rotation_deg: float
    ok: bool
    reason: str = ""
    metric: float = math.nan
    iterations: int = 0
    ms: float = 0.0
    method: str = ""

    @classmethod
    def identity(cls, reason: str = "not registered") -> PatientMotion:
        return cls(np.eye(4), 0.0, 0.0, False, reason)

    def to_json(self) -> dict[str, object]:
        return {"translation_mm": _num(self.translation_mm),
                "rotation_deg": _num(self.rotation_deg), "ok": bool(self.ok),
                "reason": self.reason, "metric": _num(self.metric, 5),
                "iterations": self.iterations, "ms": _num(self.ms, 1), "method": self.method,
                "slab_to_ct": [[round(float(v), 5) for v in row] for row in self.slab_to_ct]}


@dataclass(frozen=True, eq=False)
class CtScanResult:
    """One processed control scan: what the live view, the outputs and the procedure
    timeline show.

    Attributes:
        scan_number: 1, 2, ... in this session.
        slab: the slab as received (int16 HU voxels (K, J, I), scanner LPS geometry).
        needle_prob: (K, J, I) float32 needle probability on the slab grid (0 outside
            the region the model looked at).
        needle: the needle in the slab's frame.
        motion: the patient's motion (``None``: no planning CT to register to).
        tip_ct_lps, axis_ct_lps: (3,) the needle tip (or where it leaves the slab) and
            the unit axis in the planning CT, LPS mm (NaN when no needle).
        decision: the safety decision on the needle in the planning CT (``None``
            without a plan or a needle).
        depth_to_target_mm: along the current axis to the target's depth, mm (NaN).
        depth_to_structure_mm: along the current axis to the first hard structure's
            margin, mm (inf none ahead, NaN unknown).
        structure_ahead: that structure's name ("" none).
        seg_ms, fit_ms, registration_ms, safety_ms: stage times, ms.
    """

    scan_number: int
    slab: ImageVolume
    needle_prob: np.ndarray
    needle: SlabNeedle
    motion: PatientMotion | None
    tip_ct_lps: F64
    axis_ct_lps: F64
    decision: SafetyDecision | None = None
    depth_to_target_mm: float = math.nan
    depth_to_structure_mm: float = math.nan
    structure_ahead: str = ""
    seg_ms: float = 0.0
    fit_ms: float = 0.0
    registration_ms: float = 0.0
    safety_ms: float = 0.0

    @property
    def has_needle(self) -> bool:
        return self.needle.found and bool(np.all(np.isfinite(self.tip_ct_lps)))
