"""The one safety decision per frame (DESIGN.md, the safety model) and its parts.

Everything the assistant says about safety -- the frame's state, the OpenIGTLink STRING
and STATUS, the overlay banner, the side panel's clearances, the summary -- is derived
from one :class:`SafetyDecision` record; nothing is decided by reading text back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from guidance.io.validate import require_finite
from guidance.records import SafetyReason, SafetyWarning, WarningLevel

__all__ = ["Clearance", "MarginWidening", "SafetyDecision", "SafetyReason"]


@dataclass(frozen=True)
class MarginWidening:
    """How much every structure margin was widened, and by what.

    ``total_mm = coverage_k * sqrt(tracking^2 + calibration^2 + registration^2)
    + latency_s * speed``: the three errors are independent and zero-mean (root sum of
    squares); the latency term is a systematic lag (the real tip is ahead of the shown one
    by that much) and adds linearly.

    Attributes:
        tracking_mm: tracking error (the needle filter's tip sigma, or the declared one).
        calibration_mm: tool / probe calibration error (the calibration files' RMS).
        registration_mm: registration error at the target (expected TRE).
        latency_s: age of the input when checked plus the display latency, s.
        speed_mm_s: needle speed, mm/s.
        coverage_k: multiplier of the combined sigma.
        notes: where each figure came from (files, defaults).
    """

    tracking_mm: float = 0.0
    calibration_mm: float = 0.0
    registration_mm: float = 0.0
    latency_s: float = 0.0
    speed_mm_s: float = 0.0
    coverage_k: float = 2.0
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A NaN here would make every widened margin NaN, and every comparison with it
        # false: no warning. Refuse it where it is made.
        require_finite("margin widening (tracking, calibration, registration, latency, "
                       "speed, coverage)",
                       [self.tracking_mm, self.calibration_mm, self.registration_mm,
                        self.latency_s, self.speed_mm_s, self.coverage_k])

    @property
    def random_mm(self) -> float:
        """The random part: ``coverage_k * sqrt(sum of squares)``, mm."""
        return self.coverage_k * math.sqrt(self.tracking_mm ** 2 + self.calibration_mm ** 2
                                           + self.registration_mm ** 2)

    @property
    def latency_mm(self) -> float:
        """The systematic part: ``latency_s * speed``, mm."""
        return self.latency_s * abs(self.speed_mm_s)

    @property
    def total_mm(self) -> float:
        return self.random_mm + self.latency_mm

    def describe(self) -> str:
        """``+2.9 mm (2 x rss(tracking 0.3, calibration 0.4, registration 0.9) +
        latency 0.12 s x 10.0 mm/s)``."""
        return (f"+{self.total_mm:.1f} mm ({self.coverage_k:g} x rss(tracking "
                f"{self.tracking_mm:.2f}, calibration {self.calibration_mm:.2f}, registration "
                f"{self.registration_mm:.2f}) + latency {self.latency_s:.2f} s x "
                f"{abs(self.speed_mm_s):.1f} mm/s)")

    def to_json(self) -> dict[str, object]:
        return {"total_mm": round(self.total_mm, 3), "tracking_mm": round(self.tracking_mm, 3),
                "calibration_mm": round(self.calibration_mm, 3),
                "registration_mm": round(self.registration_mm, 3),
                "latency_s": round(self.latency_s, 4), "speed_mm_s": round(self.speed_mm_s, 2),
                "coverage_k": self.coverage_k, "notes": list(self.notes)}


@dataclass(frozen=True)
class Clearance:
    """One structure's distance from the needle (tip, shaft and path ahead).

    Attributes:
        structure: its name.
        clearance_mm: smallest signed distance, mm (negative inside; NaN unknown).
        margin_mm: the margin used (structure margin + widening), mm.
        hard: a breach is a violation (else a warning only).
        capped: the distance is at least ``clearance_mm`` (beyond the exact range).
    """

    structure: str
    clearance_mm: float
    margin_mm: float
    hard: bool = True
    capped: bool = False

    def describe_mm(self) -> str:
        """``12.3 mm``, or ``> 30 mm`` when capped (a bound, not a measurement)."""
        if self.capped:
            return f"> {self.clearance_mm:g} mm"
        return f"{self.clearance_mm:.1f} mm"


@dataclass(frozen=True, eq=False)
class SafetyDecision:
    """The safety decision for one frame (or one needle pose).

    Attributes:
        t_s: the time of the frame or pose, s since the run started (local clock).
        level: the worst level.
        reason: why (the worst finding's reason; ``CLEAR`` when none).
        structure: the structure concerned (``"plan"``, ``"target"``, ``"region"`` for
            plan items; ``""`` when clear).
        clearance_mm: its distance, mm (NaN when not a distance).
        margin_mm: the margin it was compared with (widened), mm (NaN when none).
        findings: every finding at INFO or above, worst first (one per structure or plan
            item: never two levels for one cause).
        widening: what widened the margins.
        clearances: every structure's clearance, closest first.
        tip_to_target_mm: tip-to-target distance, mm.
        lateral_offset_mm: where the needle line crosses the plane through the target
            perpendicular to the plan, from the target, mm.
        angle_deg: angle between the needle and the plan, degrees.
        depth_to_target_mm: distance to the target's depth along the needle, mm
            (negative: past it).
        depth_to_breach_mm: along the current axis from the tip to the first point
            within a hard structure's margin, mm (0 already within, inf none, NaN
            unknown).
        breach_structure: the structure breached first along the axis (``""`` none).
    """

    t_s: float
    level: WarningLevel
    reason: SafetyReason
    structure: str
    clearance_mm: float
    margin_mm: float
    findings: tuple[SafetyWarning, ...]
    widening: MarginWidening
    clearances: tuple[Clearance, ...]
    tip_to_target_mm: float
    lateral_offset_mm: float
    angle_deg: float
    depth_to_target_mm: float
    depth_to_breach_mm: float
    breach_structure: str = ""

    @property
    def message(self) -> str:
        """The worst finding's text (``"no warning"`` when clear)."""
        return self.findings[0].message if self.findings else "no warning"

    def text(self) -> str:
        """One line for the OpenIGTLink STRING, the banner and the console: level, the
        worst finding and the margin used (``DANGER: aorta: 4.1 mm, within the 7.9 mm
        margin (5.0 + 2.9 mm uncertainty)``), or ``OK: ...`` with the closest
        structure."""
        if self.findings:
            return f"{self.level.name}: {self.message}"
        close = next((c for c in self.clearances if math.isfinite(c.clearance_mm)), None)
        if close is None:
            return "OK: no warning"
        return (f"OK: closest {close.structure} {close.describe_mm()} (margin "
                f"{close.margin_mm:.1f} mm)")

    def to_json(self) -> dict[str, object]:
        def num(v: float) -> float | None:
            return round(v, 3) if math.isfinite(v) else None

        return {
            "t_s": round(self.t_s, 4), "level": self.level.name, "reason": self.reason.value,
            "structure": self.structure, "clearance_mm": num(self.clearance_mm),
            "margin_mm": num(self.margin_mm), "message": self.message,
            "widening": self.widening.to_json(),
            "tip_to_target_mm": num(self.tip_to_target_mm),
            "lateral_offset_mm": num(self.lateral_offset_mm), "angle_deg": num(self.angle_deg),
            "depth_to_target_mm": num(self.depth_to_target_mm),
            "depth_to_breach_mm": num(self.depth_to_breach_mm),
            "breach_structure": self.breach_structure,
        }
