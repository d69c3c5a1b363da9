"""The ``safety`` section of the configuration: uncertainties, thresholds, hysteresis.

One section for the one safety check (:class:`guidance.safety.check.SafetyCheck`), used by
``guidance run``, ``guidance demo`` and the benchmark alike.

Uncertainties: the calibration files of the room declare their own (pivot and probe RMS,
registration expected TRE; ``guidance.navigation.setup``) and the needle filter its
tracking covariance; the values here are used only where nothing on the path declares
one, and the decision says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guidance.planning.config import _from_mapping, check_nonneg

__all__ = ["SafetyConfig"]


@dataclass(frozen=True)
class SafetyConfig:
    """Thresholds (mm, degrees, seconds) of the safety check.

    Attributes:
        tracking_sigma_mm: tracking error (1 sigma) when the needle filter gives none.
        calibration_sigma_mm: tool calibration error when no calibration file on the
            needle's path declares one (e.g. a tracker that sends the tip itself).
        registration_tre_mm: registration error when no registration file declares one.
        display_latency_s: from the decision to the picture and to 3D Slicer, s; added
            to the measured age of the input, times the needle speed, to the margins.
        coverage_k: multiplier of the combined sigma (2 ~ 95 % for a 1D normal error).
        caution_extra_mm: CAUTION when within margin + widening + this.
        danger_ahead_mm: DANGER when the path ahead breaches within this depth.
        hysteresis_mm: a level is left only when the distance clears its threshold by
            this much.
        hold_s: a level is left only after the lower level held for this long.
        shaft_points, ahead_points: fixed number of samples along the shaft and the
            path ahead (the check's cost is bounded by these).
        ahead_extra_mm: the path ahead reaches this far beyond the target's depth.
        lateral_info_mm, lateral_caution_mm: plan deviation (at the target's depth).
        angle_info_deg, angle_caution_deg: angle to the plan.
        overshoot_caution_mm: CAUTION when the tip is this far past the target's depth.
        target_zone_mm: the last stretch before the target's depth (and all beyond it)
            where the target's own bones are not counted (the planner's
            ``trajectory.target_zone_mm``: a disc is entered between its endplates).
    """

    tracking_sigma_mm: float = 0.5
    calibration_sigma_mm: float = 0.5
    registration_tre_mm: float = 1.0
    display_latency_s: float = 0.05
    coverage_k: float = 2.0
    caution_extra_mm: float = 3.0
    danger_ahead_mm: float = 5.0
    hysteresis_mm: float = 1.0
    hold_s: float = 0.3
    shaft_points: int = 8
    ahead_points: int = 16
    ahead_extra_mm: float = 10.0
    lateral_info_mm: float = 2.0
    lateral_caution_mm: float = 5.0
    angle_info_deg: float = 3.0
    angle_caution_deg: float = 8.0
    overshoot_caution_mm: float = 2.0
    target_zone_mm: float = 5.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_points"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                    raise ValueError(f"safety.{f.name} must be an int >= 2, got {value!r}")
            else:
                check_nonneg(f"safety.{f.name}", value)
        if self.lateral_caution_mm < self.lateral_info_mm:
            raise ValueError(f"safety.lateral_caution_mm must be >= lateral_info_mm, got "
                             f"{self.lateral_caution_mm} < {self.lateral_info_mm}")
        if self.angle_caution_deg < self.angle_info_deg:
            raise ValueError(f"safety.angle_caution_deg must be >= angle_info_deg, got "
                             f"{self.angle_caution_deg} < {self.angle_info_deg}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SafetyConfig:
        """Build from a mapping; an unknown key is an error naming it."""
        return _from_mapping(cls, data, "safety")
