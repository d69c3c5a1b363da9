"""Per-frame records of the live pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.records import GuidanceState, SafetyWarning, WarningLevel
from trackers.pose import TrackedPose

__all__ = ["Frame", "FrameResult", "NeedleEstimate2D3D", "WorkItem"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Frame:
    """An incoming frame.

    Attributes:
        seq: per-device sequence number.
        device_name: OpenIGTLink device name.
        image: voxels (k, j, i[, c]) with ``ijk_to_lps``.
        timestamp_s: sender's timestamp, s.
        received_ns: local monotonic time the last byte arrived, ns.
        poses: the newest tool poses at the time the frame was taken for processing.
    """

    seq: int
    device_name: str
    image: ImageVolume
    timestamp_s: float
    received_ns: int
    poses: dict[str, TrackedPose]


@dataclass(frozen=True)
class NeedleEstimate2D3D:
    """The needle as the pipeline reports it.

    Attributes:
        tip_ij, hub_ij: (2,) pixel coordinates in the frame (NaN when not seen in it).
        tip_lps, axis_lps: (3,) LPS mm / unit hub->tip (NaN when no 3D estimate).
        confidence: [0, 1].
        source: ``image``, ``tracker`` or ``image+tracker``.
        speed_mm_s: needle speed estimate, mm/s (0 when unknown).
    """

    tip_ij: F64
    hub_ij: F64
    tip_lps: F64
    axis_lps: F64
    confidence: float
    source: str
    speed_mm_s: float = 0.0

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
    """Mutable per-frame scratch that stages fill in (not shared across threads)."""

    frame: Frame
    t_s: float
    work: np.ndarray | None = None
    work_scale: float = 1.0
    ridge: np.ndarray | None = None
    needle: NeedleEstimate2D3D | None = None
    labels: np.ndarray | None = None
    level: WarningLevel = WarningLevel.NONE
    warnings: list[SafetyWarning] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    state: GuidanceState = GuidanceState.OK
    modality: str = ""
    label_names: tuple[str, ...] = ("background", "needle")


@dataclass(frozen=True, eq=False)
class FrameResult:
    """What the pipeline says about one frame (or about the absence of frames).

    Attributes:
        seq: frame sequence number (0 for a STALE report with no frame).
        t_s: seconds since the pipeline started (local monotonic).
        received_ns: when the frame arrived (0 when no frame).
        state: OK / STALE / DEGRADED / NO_GUIDANCE.
        reasons: why the state is not OK, human-readable.
        needle: the needle estimate, if any.
        level: worst warning level.
        warnings: the warnings of this frame.
        metrics: ``tip_to_target_mm``, ``lateral_offset_mm``, ``angle_deg``, ...
        stage_ms: time spent per stage, ms.
        image: the frame (for display); ``labels`` the label map on its grid.
        poses: the tool poses the frame was processed with (the overlay projects the
            plan through ``FocalSpotToReference`` on fluoroscopy frames).
        label_names: class name per label value of ``labels`` (index = value).
        modality: ``us``, ``fluoro`` or ``ct`` as the segment stage took the frame.
    """

    seq: int
    t_s: float
    received_ns: int
    state: GuidanceState
    reasons: tuple[str, ...]
    needle: NeedleEstimate2D3D | None
    level: WarningLevel
    warnings: tuple[SafetyWarning, ...]
    metrics: dict[str, float]
    stage_ms: dict[str, float]
    image: ImageVolume | None
    labels: np.ndarray | None
    poses: dict[str, TrackedPose] = field(default_factory=dict)
    label_names: tuple[str, ...] = ("background", "needle")
    modality: str = ""
