"""The one safety decision per frame: the needle against the plan, the planning CT's
critical structures and (later) the structures segmented in the live image, margins
widened by the declared uncertainty (DESIGN.md, the safety model)."""

from guidance.records import SafetyReason
from guidance.safety.check import SafetyCheck, bench_safety_check
from guidance.safety.config import SafetyConfig
from guidance.safety.decision import Clearance, MarginWidening, SafetyDecision

__all__ = [
    "Clearance",
    "MarginWidening",
    "SafetyCheck",
    "SafetyConfig",
    "SafetyDecision",
    "SafetyReason",
    "bench_safety_check",
]
