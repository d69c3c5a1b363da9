"""Record types shared across the application: guidance states and safety warnings.

One frozen dataclass per concept (STYLE.md): no dicts with string keys on the
frame path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "MODALITIES",
    "GuidanceState",
    "Modality",
    "SafetyReason",
    "SafetyWarning",
    "WarningLevel",
]


class Modality(str, enum.Enum):
    """The imaging modality of a frame: it picks the model, the frame's geometry and the
    loop's path. The one list of modalities; everything else derives from it.

    A ``str`` enum: ``Modality.US == "us"``, so configuration files, command lines and
    model cards keep their lower-case names.
    """

    US = "us"
    FLUORO = "fluoro"
    CT = "ct"

    def __str__(self) -> str:
        return self.value

    @property
    def dicom_term(self) -> str:
        """The DICOM Modality (0008,0060) term we send in IGTLv3 metadata."""
        return _DICOM_TERM[self]

    @classmethod
    def from_dicom_term(cls, term: str) -> Modality | None:
        """The modality of a DICOM Modality term or of our own name (case-insensitive),
        None when it is not one we image with (e.g. ``"MR"``)."""
        t = term.strip().upper()
        return _FROM_DICOM.get(t)


_DICOM_TERM = {Modality.US: "US", Modality.FLUORO: "RF", Modality.CT: "CT"}
#: DICOM terms (and our own names) -> modality. XA/RF/DX/CR/RG: projection X-ray.
_FROM_DICOM: dict[str, Modality] = {
    "US": Modality.US, "CT": Modality.CT, "XA": Modality.FLUORO, "RF": Modality.FLUORO,
    "DX": Modality.FLUORO, "CR": Modality.FLUORO, "RG": Modality.FLUORO,
    "FLUORO": Modality.FLUORO, "FLUOROSCOPY": Modality.FLUORO,
}
#: The modalities' names, in the order of :class:`Modality`.
MODALITIES: tuple[str, ...] = tuple(m.value for m in Modality)


class GuidanceState(enum.Enum):
    """What the assistant can say about the current frame.

    ``OK``: fresh input, every stage ran. ``STALE``: the newest input is older than its
    threshold; whatever is shown is not current. ``DEGRADED``: a stage fell back (e.g. a
    backend failed to load, detector and model disagree). ``NO_GUIDANCE``: nothing
    trustworthy to show (no needle, no plan, a stage failed).
    """

    OK = "OK"
    STALE = "STALE"
    DEGRADED = "DEGRADED"
    NO_GUIDANCE = "NO_GUIDANCE"


class WarningLevel(enum.IntEnum):
    """Severity of a safety warning; ordered so that ``max()`` gives the worst."""

    NONE = 0
    INFO = 1
    CAUTION = 2
    DANGER = 3


class SafetyReason(enum.Enum):
    """Why a finding (and the decision) has its level."""

    #: Nothing to report.
    CLEAR = "clear"
    #: The tip or shaft is inside a structure.
    INSIDE_STRUCTURE = "inside_structure"
    #: The tip or shaft is closer to a structure than its (widened) margin.
    WITHIN_MARGIN = "within_margin"
    #: Going on along the current axis breaches a structure's margin.
    BREACH_AHEAD = "breach_ahead"
    #: Within the margin plus the caution band.
    NEAR_STRUCTURE = "near_structure"
    #: The needle is outside the region whose distances were computed: unknown.
    OUTSIDE_ANALYSED_REGION = "outside_analysed_region"
    #: No critical structures were loaded: only the plan deviation is known.
    ANATOMY_NOT_CHECKED = "anatomy_not_checked"
    #: The needle line misses the target (offset at the target's depth).
    OFF_PLAN = "off_plan"
    #: The needle's direction differs from the planned one.
    ANGLE_TO_PLAN = "angle_to_plan"
    #: The tip is past the target's depth along the plan.
    PAST_TARGET = "past_target"
    #: Ultrasound: the tip touches or is inside a nerve the model sees.
    INTRANEURAL_RISK = "intraneural_risk"
    #: Ultrasound: the tip is inside a vessel the model sees.
    INTRAVASCULAR_RISK = "intravascular_risk"
    #: CT control scan: the patient moved since the planning scan (registration).
    PATIENT_MOTION = "patient_motion"


@dataclass(frozen=True)
class SafetyWarning:
    """One safety warning about one structure at one time.

    Attributes:
        t_s: time of the frame the warning is about, seconds since the run started
            (local monotonic clock).
        level: severity.
        structure: name of the critical structure (or ``"plan"`` for plan deviation).
        distance_mm: signed distance in mm (negative = inside the structure / beyond
            the allowed deviation); NaN when not applicable.
        message: human-readable text, naming the structure and the distance.
        reason: why it has its level.
        margin_mm: the margin the distance was compared with (widened by the declared
            uncertainty), mm; NaN for plan items.
    """

    t_s: float
    level: WarningLevel
    structure: str
    distance_mm: float
    message: str
    reason: SafetyReason = SafetyReason.CLEAR
    margin_mm: float = float("nan")

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict (``level`` as its name)."""
        return {
            "t_s": round(self.t_s, 4),
            "level": self.level.name,
            "structure": self.structure,
            "distance_mm": None if self.distance_mm != self.distance_mm else round(
                self.distance_mm, 3
            ),
            "message": self.message,
            "reason": self.reason.value,
            "margin_mm": None if self.margin_mm != self.margin_mm else round(self.margin_mm, 3),
        }
