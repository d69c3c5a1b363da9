"""The ``safety`` section of the configuration: uncertainties, thresholds, hysteresis.

One section for the one safety check (:class:`guidance.safety.check.SafetyCheck`), used by
``guidance run``, ``guidance demo`` and the benchmark alike. Every threshold's default,
unit, range and meaning is declared once, on its field (``docs/CONFIG.md`` lists them).

Uncertainties: the calibration files of the room declare their own (pivot and probe RMS,
registration expected TRE; ``guidance.navigation.setup``) and the needle filter its
tracking covariance; the values here are used only where nothing on the path declares
one, and the decision says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guidance.io.config_schema import check_fields, load_section, require_order, setting
from guidance.planning.config import TARGET_ZONE_MM

__all__ = ["DISPLAY_LATENCY_S", "PLAN_HYSTERESIS_MM", "SafetyConfig"]

#: From the decision to the picture and to 3D Slicer, s: the one default of the display
#: latency (every other latency default refers to it).
DISPLAY_LATENCY_S = 0.05
#: Hysteresis band of the plan's check (tracked tip against the CT's distance fields),
#: mm: about 2 sigma of the tracked tip's jitter. The image-anatomy check has its own,
#: smaller band (``image_anatomy.hysteresis_mm``: distances on the US model's 0.175 mm
#: grid, not through the tracker).
PLAN_HYSTERESIS_MM = 1.0


@dataclass(frozen=True)
class SafetyConfig:
    """Thresholds (mm, degrees, seconds) of the safety check; each field documents
    itself (``setting(doc=...)``)."""

    tracking_sigma_mm: float = setting(
        0.5, "tracking error (1 sigma) when the needle filter gives none", unit="mm",
        ge=0, le=10)
    calibration_sigma_mm: float = setting(
        0.5, "tool calibration error (1 sigma) when no calibration file on the needle's "
             "path declares one", unit="mm", ge=0, le=10)
    registration_tre_mm: float = setting(
        1.0, "registration error when no registration file declares one", unit="mm",
        ge=0, le=10)
    display_latency_s: float = setting(
        DISPLAY_LATENCY_S, "decision to picture and 3D Slicer; added to the input's age, "
                           "times the needle speed, to the margins", unit="s", ge=0, le=2)
    coverage_k: float = setting(
        2.0, "multiplier of the combined sigma (2 ~ 95 % for a 1D normal error)",
        ge=0, le=5)
    caution_extra_mm: float = setting(
        3.0, "CAUTION when within margin + widening + this", unit="mm", ge=0, le=50)
    danger_ahead_mm: float = setting(
        5.0, "DANGER when the path ahead breaches within this depth", unit="mm",
        ge=0, le=100)
    hysteresis_mm: float = setting(
        PLAN_HYSTERESIS_MM, "a level is left only when the distance clears its threshold "
                            "by this much", unit="mm", ge=0, le=10)
    hold_s: float = setting(
        0.3, "a level is left only after the lower level held this long", unit="s",
        ge=0, le=10)
    shaft_points: int = setting(
        8, "samples along the shaft (bounds the check's cost)", ge=2, le=256)
    ahead_points: int = setting(
        16, "samples along the path ahead (bounds the check's cost)", ge=2, le=256)
    ahead_extra_mm: float = setting(
        10.0, "the path ahead reaches this far beyond the target's depth", unit="mm",
        ge=0, le=100)
    lateral_info_mm: float = setting(
        2.0, "INFO beyond this deviation from the plan (at the target's depth)",
        unit="mm", ge=0, le=50)
    lateral_caution_mm: float = setting(
        5.0, "CAUTION beyond this deviation from the plan (at the target's depth)",
        unit="mm", ge=0, le=50)
    angle_info_deg: float = setting(
        3.0, "INFO beyond this angle to the plan", unit="deg", ge=0, le=90)
    angle_caution_deg: float = setting(
        8.0, "CAUTION beyond this angle to the plan", unit="deg", ge=0, le=90)
    overshoot_caution_mm: float = setting(
        2.0, "CAUTION when the tip is this far past the target's depth", unit="mm",
        ge=0, le=50)
    target_zone_mm: float = setting(
        TARGET_ZONE_MM, "last stretch before the target's depth where its own bones are "
                        "not counted (the planner's trajectory.target_zone_mm)", unit="mm",
        ge=0, le=50)

    def __post_init__(self) -> None:
        check_fields(self, "safety")
        require_order(self, "safety", "lateral_info_mm", "lateral_caution_mm")
        require_order(self, "safety", "angle_info_deg", "angle_caution_deg")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SafetyConfig:
        """Build from a mapping; an unknown key is an error naming it and the allowed
        ones (:func:`guidance.io.config_schema.load_section`)."""
        return load_section(cls, data, path="safety")
