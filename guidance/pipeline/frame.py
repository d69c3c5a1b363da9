"""Per-update records of the live pipeline: the incoming frame, the work item the stages
fill in, typed state reasons, and the result every output is derived from."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.ctscan.result import CtScanResult
from guidance.geometry import ImageVolume
from guidance.pipeline.outlines import Outline
from guidance.pipeline.placement import FramePlacement
from guidance.records import GuidanceState, SafetyWarning, WarningLevel
from guidance.safety.decision import SafetyDecision
from trackers.transform_graph import EdgeUse

__all__ = ["Frame", "FrameResult", "NeedleEstimate2D3D", "Reason", "StateReason", "WorkItem",
           "state_of"]

F64 = npt.NDArray[np.float64]


class Reason(enum.Enum):
    """Why an update's state is what it is; each code implies one state.

    The frame's state is the worst state its reasons imply (:func:`state_of`); a code whose
    state is ``OK`` is a notice shown beside the guidance (e.g. the fluoroscopy overlay is
    not registered) that does not make the guidance less trustworthy.
    """

    NO_FRAME = ("no_frame", GuidanceState.STALE)
    FRAME_OLD = ("frame_old", GuidanceState.STALE)
    POSE_STALE = ("pose_stale", GuidanceState.STALE)
    NO_POSE = ("no_pose", GuidanceState.STALE)
    NO_NEEDLE = ("no_needle", GuidanceState.NO_GUIDANCE)
    NO_PLAN = ("no_plan", GuidanceState.NO_GUIDANCE)
    NO_3D_NEEDLE = ("no_3d_needle", GuidanceState.NO_GUIDANCE)
    MISSING_TRANSFORM = ("missing_transform", GuidanceState.NO_GUIDANCE)
    POSE_INVALID = ("pose_invalid", GuidanceState.NO_GUIDANCE)
    MODALITY_UNKNOWN = ("modality_unknown", GuidanceState.NO_GUIDANCE)
    PROCESSING_FAILED = ("processing_failed", GuidanceState.NO_GUIDANCE)
    MODEL_MISSING = ("model_missing", GuidanceState.DEGRADED)
    BACKEND_FALLBACK = ("backend_fallback", GuidanceState.DEGRADED)
    SPACING_OUT_OF_RANGE = ("spacing_out_of_range", GuidanceState.DEGRADED)
    SPACING_NOT_CALIBRATED = ("spacing_not_calibrated", GuidanceState.DEGRADED)
    DETECTORS_DISAGREE = ("detectors_disagree", GuidanceState.DEGRADED)
    TRACKER_IMAGE_DISAGREE = ("tracker_image_disagree", GuidanceState.DEGRADED)
    OUTLIER = ("outlier", GuidanceState.DEGRADED)
    CLASSICAL_ONLY_NEEDLE = ("classical_only_needle", GuidanceState.OK)
    FRAME_NOT_PLACED = ("frame_not_placed", GuidanceState.OK)
    OVERLAY_NOT_REGISTERED = ("overlay_not_registered", GuidanceState.OK)
    #: Ultrasound without a plan: the nerves and vessels the model sees are checked.
    IMAGE_ANATOMY_ONLY = ("image_anatomy_only", GuidanceState.OK)
    #: CT: a slab the control-scan path refuses (one slice, a bad matrix, NaN spacing).
    SLAB_REFUSED = ("slab_refused", GuidanceState.NO_GUIDANCE)
    #: CT: the needle leaves the slab going deeper: the tip was not imaged.
    TIP_BEYOND_SLAB = ("tip_beyond_slab", GuidanceState.DEGRADED)
    #: CT: the slab could not be registered to the planning CT (motion unknown).
    REGISTRATION_FAILED = ("registration_failed", GuidanceState.DEGRADED)
    #: CT: no planning CT loaded: the scanner's frame is taken as the planning CT's.
    SLAB_NOT_REGISTERED = ("slab_not_registered", GuidanceState.DEGRADED)

    def __init__(self, code: str, state: GuidanceState) -> None:
        self.code = code
        self.state = state


_SEVERITY = {GuidanceState.OK: 0, GuidanceState.DEGRADED: 1, GuidanceState.NO_GUIDANCE: 2,
             GuidanceState.STALE: 3}


@dataclass(frozen=True)
class StateReason:
    """One reason with its message (what and why, with numbers and names)."""

    reason: Reason
    message: str

    @property
    def state(self) -> GuidanceState:
        return self.reason.state

    def to_json(self) -> dict[str, str]:
        return {"code": self.reason.code, "state": self.state.name, "message": self.message}


def state_of(reasons: tuple[StateReason, ...] | list[StateReason]) -> GuidanceState:
    """The worst state the reasons imply (OK < DEGRADED < NO_GUIDANCE < STALE); OK when
    there are none."""
    worst = GuidanceState.OK
    for r in reasons:
        if _SEVERITY[r.state] > _SEVERITY[worst]:
            worst = r.state
    return worst


@dataclass(frozen=True, eq=False)
class Frame:
    """An incoming frame.

    Attributes:
        seq: per-device sequence number.
        device_name: OpenIGTLink device name (``Image_Reference``: PLUS naming, the image
            given in frame ``Reference``).
        image: voxels (k, j, i[, c]) with ``ijk_to_lps`` mapping to the frame named by
            ``frame_name`` (LPS convention within it), as received.
        timestamp_s: sender's timestamp, s.
        received_ns: local monotonic time the last byte arrived, ns.
        frame_name: the frame the IMAGE matrix maps to (``Reference``, ``Image``, ``CT``).
        at_s: the time the frame shows, on the poses' clock (its timestamp minus the
            temporal calibration's lag): poses are interpolated to it.
    """

    seq: int
    device_name: str
    image: ImageVolume
    timestamp_s: float
    received_ns: int
    frame_name: str = "Reference"
    at_s: float = 0.0


@dataclass(frozen=True)
class NeedleEstimate2D3D:
    """The needle as the pipeline reports it.

    Attributes:
        tip_ij, hub_ij: (2,) pixel coordinates in the frame (NaN when not seen in it).
        tip_lps, axis_lps: (3,) the tip (mm) and the unit hub -> tip direction in the
            planning CT's LPS frame (NaN when no 3D estimate).
        confidence: [0, 1].
        source: ``image``, ``tracker`` or ``image+tracker``.
        speed_mm_s: needle speed estimate, mm/s (0 when unknown).
        sigma_mm: tracking uncertainty of the tip (the filter's), mm (NaN unknown).
    """

    tip_ij: F64
    hub_ij: F64
    tip_lps: F64
    axis_lps: F64
    confidence: float
    source: str
    speed_mm_s: float = 0.0
    sigma_mm: float = float("nan")

    @property
    def has_3d(self) -> bool:
        """True when a 3D tip and axis are known."""
        return bool(np.all(np.isfinite(self.tip_lps)) and np.all(np.isfinite(self.axis_lps)))

    @property
    def in_image(self) -> bool:
        """True when the needle was located in the frame."""
        return bool(np.all(np.isfinite(self.tip_ij)))


@dataclass
class WorkItem:
    """Mutable per-update scratch that stages fill in (not shared across threads).

    ``frame`` is ``None`` for an update driven by a needle pose alone (navigation on
    the planning CT without images).
    """

    frame: Frame | None
    t_s: float
    at_s: float = 0.0
    received_ns: int = 0
    work: np.ndarray | None = None
    work_scale: float = 1.0
    needle: NeedleEstimate2D3D | None = None
    tracked: NeedleEstimate2D3D | None = None
    labels: np.ndarray | None = None
    decision: SafetyDecision | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[StateReason] = field(default_factory=list)
    modality: str = ""
    label_names: tuple[str, ...] = ("background", "needle")
    placement: FramePlacement | None = None
    outlines: tuple[Outline, ...] = ()
    placement_edges: tuple[EdgeUse, ...] = ()
    tip_edges: tuple[EdgeUse, ...] = ()
    latency_s: float = 0.0
    #: the model's output for this frame (probabilities, labels, grid), when a model ran:
    #: the image-anatomy check reads its nerve and vessel classes.
    segmentation: Any = None
    #: ultrasound: the image-anatomy check's components of this frame.
    image_structures: tuple[Any, ...] = ()
    #: CT control slab: the scan's result.
    ct_scan: CtScanResult | None = None
    #: the model's focus window in frame pixels ``(x0, y0, x1, y1)``, end exclusive,
    #: when the model looked only there (see ``segment.focus_px``).
    focus_window: tuple[int, int, int, int] | None = None

    def add(self, reason: Reason, message: str) -> None:
        """Add a reason (its state counts towards the update's state)."""
        self.reasons.append(StateReason(reason, message))

    @property
    def state(self) -> GuidanceState:
        return state_of(self.reasons)


@dataclass(frozen=True, eq=False, kw_only=True)
class FrameResult:
    """What the pipeline says about one update (a frame, a needle pose, or the absence
    of input). Every output -- STRING, STATUS, TRANSFORM, overlay, summary -- is derived
    from it.

    Attributes:
        seq: frame or pose sequence number (0 for a STALE report without input).
        t_s: seconds since the pipeline started (local monotonic).
        received_ns: when the input arrived (0 when none).
        kind: ``frame``, ``pose`` (navigation from poses alone) or ``none``.
        state: OK / STALE / DEGRADED / NO_GUIDANCE, from ``state_reasons``.
        state_reasons: why, typed.
        needle: the needle estimate, if any.
        decision: the safety decision, if one was made (a plan and a 3D needle).
        metrics: numeric diagnostics (inference time, cross-check distances); safety
            figures are in ``decision``.
        stage_ms: time spent per stage, ms.
        image: the frame as received (for display), ``labels`` the label map on its grid.
        placement: where the frame lies in the planning CT (``None``: not placed).
        outlines: the plan's critical structures projected into the frame (fluoroscopy
            with a C-arm calibration).
        label_names: class name per label value of ``labels`` (index = value).
        modality: ``us``, ``fluoro`` or ``ct``.
        device_name: the input's device name.
        timestamp_s: the input's sender timestamp, s.
        image_structures: ultrasound: the nerves and vessels the model sees, with their
            distances (:class:`~guidance.safety.image_anatomy.ImageStructure`).
        at_s: the time the result is for on the poses' clock (a frame: its timestamp
            minus the temporal calibration's lag), s.
        focus_window: ``(x0, y0, x1, y1)`` frame pixels (end exclusive) where the
            model looked when it ran on its focus window only: ``labels`` hold only the
            needle there, nothing elsewhere (None: the whole frame).
        ct_scan: a CT control slab's result (the needle in 3D, the patient's motion,
            depths): :class:`~guidance.ctscan.result.CtScanResult`; ``None`` otherwise.
    """

    seq: int
    t_s: float
    received_ns: int
    state: GuidanceState
    kind: str = "frame"
    state_reasons: tuple[StateReason, ...] = ()
    needle: NeedleEstimate2D3D | None = None
    decision: SafetyDecision | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    image: ImageVolume | None = None
    labels: np.ndarray | None = None
    placement: FramePlacement | None = None
    outlines: tuple[Outline, ...] = ()
    label_names: tuple[str, ...] = ("background", "needle")
    modality: str = ""
    device_name: str = ""
    timestamp_s: float = 0.0
    at_s: float = float("nan")
    image_structures: tuple[Any, ...] = ()
    ct_scan: CtScanResult | None = None
    focus_window: tuple[int, int, int, int] | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """The reasons' messages, worst state first (what the banner shows)."""
        ordered = sorted(self.state_reasons, key=lambda r: -_SEVERITY[r.state])
        return tuple(r.message for r in ordered)

    @property
    def level(self) -> WarningLevel:
        """The decision's level (NONE without a decision)."""
        return self.decision.level if self.decision is not None else WarningLevel.NONE

    @property
    def warnings(self) -> tuple[SafetyWarning, ...]:
        """The decision's findings, worst first (none without a decision)."""
        return self.decision.findings if self.decision is not None else ()
