"""Pure math (numpy/scipy only, no I/O): pivot and spin calibration, point registration
with expected TRE, ultrasound probe calibration, temporal calibration, C-arm projection.

Every function takes arrays and returns a frozen dataclass carrying its quality figures;
degenerate input raises :class:`CalibrationError` (a ``ValueError``) whose message names
the problem and the measured value. Frames and units are in each docstring (mm, 4x4
float64 ``a_to_b`` rigid transforms). JSON formats of the CLI: ``calibration/FORMATS.md``.
"""

from calibration.carm import CArmResult, carm_calibration, decompose_projection, project
from calibration.errors import CalibrationError
from calibration.pivot import PivotResult, angular_range_deg, pivot_calibration, tip_frame
from calibration.probe import ProbeCalibrationResult, probe_calibration
from calibration.registration import (
    RegistrationResult,
    expected_fre,
    expected_tre,
    fle_from_fre,
    register_points,
)
from calibration.rigid import invert_rigid, is_identity, validate_rigid
from calibration.spin import SpinResult, spin_calibration
from calibration.temporal import TemporalResult, temporal_calibration

__all__ = [
    "CArmResult",
    "CalibrationError",
    "PivotResult",
    "ProbeCalibrationResult",
    "RegistrationResult",
    "SpinResult",
    "TemporalResult",
    "angular_range_deg",
    "carm_calibration",
    "decompose_projection",
    "expected_fre",
    "expected_tre",
    "fle_from_fre",
    "invert_rigid",
    "is_identity",
    "pivot_calibration",
    "probe_calibration",
    "project",
    "register_points",
    "spin_calibration",
    "temporal_calibration",
    "tip_frame",
    "validate_rigid",
]
