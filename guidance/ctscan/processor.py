"""One CT control scan, start to end (before the safety decision, which the live loop
makes with the same check as every other update):

register the slab to the planning CT (the patient's motion, initialised at the last one)
-> segment every slice in one batched call around the plan's path (mapped into the slab
by that motion) -> one 3D needle line -> the needle in the planning CT.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.ctscan.needle3d import NeedleFitConfig, SlabSegmenter, fit_needle_3d
from guidance.ctscan.registration import RegistrationConfig, register_slab
from guidance.ctscan.result import CtScanResult, PatientMotion
from guidance.geometry import ImageVolume
from guidance.io.config_schema import check_fields, load_section, meta, setting
from guidance.planning.plan import Plan
from models.segmenter import Segmenter

__all__ = ["ControlScanConfig", "ControlScanProcessor"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ControlScanConfig:
    """Settings of the control-scan path (the ``ct_scan`` keys); each field documents
    itself."""

    motion_caution_mm: float = setting(
        2.0, "patient motion since the planning scan above this is a CAUTION", unit="mm",
        gt=0, le=100)
    register: bool = setting(
        True, "register each slab to the planning CT (off: the scanner frame is taken as "
              "the planning CT's, and every scan says so)")
    fit: NeedleFitConfig = field(
        default_factory=NeedleFitConfig, metadata=meta("the 3D needle fit"))
    registration: RegistrationConfig = field(
        default_factory=RegistrationConfig, metadata=meta("the slab registration"))

    def __post_init__(self) -> None:
        check_fields(self, "ct_scan")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlScanConfig:
        """Build from a mapping (the one loader: unknown keys and bad values refused)."""
        return load_section(cls, data, path="ct_scan")


def _apply(m: npt.NDArray[np.floating], p: npt.NDArray[np.floating]) -> F64:
    out: F64 = p @ m[:3, :3].T + m[:3, 3]
    return out


class ControlScanProcessor:
    """The control-scan path's state across scans: the scan count, the last motion (the
    next registration's start) and the last needle (the next segmentation's region and
    insertion direction when there is no plan).

    Args:
        segmenter: the CT model.
        config: settings.
    """

    def __init__(self, segmenter: Segmenter, config: ControlScanConfig | None = None) -> None:
        self.config = config or ControlScanConfig()
        self.slab_segmenter = SlabSegmenter(segmenter)
        self.planning_ct: ImageVolume | None = None
        self.plan: Plan | None = None
        self.scans = 0
        self.last_motion: PatientMotion | None = None
        self._last_tip_ct: F64 | None = None
        self._last_axis_ct: F64 | None = None

    def set_planning_ct(self, ct: ImageVolume | None) -> None:
        """Register slabs to this CT from now on (None: no registration)."""
        self.planning_ct = ct
        self.last_motion = None

    def set_plan(self, plan: Plan | None) -> None:
        self.plan = plan

    def _hints_ct(self) -> tuple[F64 | None, F64 | None]:
        """Points the needle is near and its insertion direction, planning-CT LPS."""
        pts: list[F64] = []
        direction = None
        if self.plan is not None:
            pts += [self.plan.entry_lps, self.plan.target_lps]
            direction = self.plan.direction_lps
        if self._last_tip_ct is not None and self._last_axis_ct is not None:
            pts += [self._last_tip_ct, self._last_tip_ct - 40.0 * self._last_axis_ct]
            if direction is None:
                direction = self._last_axis_ct
        return (np.stack(pts) if pts else None), direction

    def process(self, slab: ImageVolume) -> CtScanResult:
        """Process one checked slab (see :func:`guidance.ctscan.slab.slab_from_message`).

        Returns:
            The result without a safety decision (the loop makes it).
        """
        self.scans += 1
        pts_ct, dir_ct = self._hints_ct()
        motion: PatientMotion | None = None
        t0 = time.perf_counter()
        if self.planning_ct is not None and self.config.register:
            start = self.last_motion.slab_to_ct if self.last_motion is not None and \
                self.last_motion.ok else None
            roi = None
            if pts_ct is not None:
                inv0 = np.linalg.inv(start) if start is not None else np.eye(4)
                roi = _apply(inv0, pts_ct[1:2] if self.plan is not None else pts_ct[:1])
            motion = register_slab(slab, self.planning_ct, start, self.config.registration,
                                   roi)
            if motion.ok:
                self.last_motion = motion
        t1 = time.perf_counter()
        slab_to_ct = motion.slab_to_ct if motion is not None else np.eye(4)
        ct_to_slab = np.linalg.inv(slab_to_ct)
        hint = _apply(ct_to_slab, pts_ct) if pts_ct is not None else None
        if hint is not None and self.plan is not None:
            # The whole planned path within reach of the slab, not only its ends.
            s = np.linspace(0.0, 1.0, 9)[:, None]
            hint = _apply(ct_to_slab, self.plan.entry_lps + s * (self.plan.target_lps
                                                                  - self.plan.entry_lps))
        prob = self.slab_segmenter.segment(slab, hint)
        t2 = time.perf_counter()
        dir_slab = ct_to_slab[:3, :3] @ dir_ct if dir_ct is not None else None
        needle = fit_needle_3d(slab, prob, dir_slab, self.config.fit)
        t3 = time.perf_counter()
        if needle.found:
            tip_ct = _apply(slab_to_ct, needle.tip_lps[None])[0]
            axis_ct = slab_to_ct[:3, :3] @ needle.axis_lps
            axis_ct = axis_ct / np.linalg.norm(axis_ct)
            self._last_tip_ct, self._last_axis_ct = tip_ct, axis_ct
        else:
            tip_ct = np.full(3, np.nan)
            axis_ct = np.full(3, np.nan)
        return CtScanResult(self.scans, slab, prob, needle, motion, tip_ct, axis_ct,
                            seg_ms=(t2 - t1) * 1e3, fit_ms=(t3 - t2) * 1e3,
                            registration_ms=(t1 - t0) * 1e3)
