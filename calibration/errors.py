"""The one exception type of the calibration package."""

from __future__ import annotations

__all__ = ["CalibrationError"]


class CalibrationError(ValueError):
    """The input cannot give a trustworthy calibration (too few poses, too little motion,
    degenerate geometry). The message names the problem and the measured value."""
