"""Spin calibration: the needle axis in the tool frame from rotations about the shaft.

When the tool spins about its shaft (a fixed line in tracker space), the shaft direction
``d`` in the tool frame satisfies ``R_i d = d_tracker`` for every pose, so ``d`` minimises
``sum_i |R_i d - mean_j R_j d|^2 = d^T M d`` with ``M = sum_i (R_i - R_mean)^T (R_i -
R_mean)``: the eigenvector of ``M`` with the smallest eigenvalue (the common fixed axis of
the relative rotations ``R_0^T R_i``; cf. the screw-axis formulation in Yaniv 2015 and
the PLUS "spin" calibration of the stylus/needle).

A point on the shaft ``p`` (tool frame) stays on the fixed tracker-space line
``c + s d_tracker``: ``P (R_i p + t_i - c) = 0`` with ``P = I - d_tracker d_tracker^T``,
linear in ``(p, c)``; solved in the least-squares sense with the minimum-norm solution
(the gauge along the axis is free) and reported as the point closest to the tool origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration._checks import as_array, as_rotations_translations
from calibration.errors import CalibrationError
from calibration.pivot import angular_range_deg

__all__ = ["SpinResult", "spin_calibration"]


@dataclass(frozen=True, eq=False)
class SpinResult:
    """Result of :func:`spin_calibration`.

    Attributes:
        axis_tool: (3,) unit shaft direction in the tool frame. Points from hub to tip when
            a tip offset was given; otherwise its sign makes the largest component positive.
        axis_point_tool_mm: (3,) point of the shaft line closest to the tool origin, tool
            frame, mm.
        axis_tracker: (3,) unit shaft direction in the tracker frame (mean over poses).
        spin_range_deg: largest rotation angle between any two poses, degrees.
        wobble_rms_deg: RMS angle between ``R_i axis_tool`` and ``axis_tracker``, degrees
            (0 for a perfect spin).
        line_rms_mm: RMS distance of the shaft points to the fixed tracker-space line, mm.
    """

    axis_tool: npt.NDArray[np.float64]
    axis_point_tool_mm: npt.NDArray[np.float64]
    axis_tracker: npt.NDArray[np.float64]
    spin_range_deg: float
    wobble_rms_deg: float
    line_rms_mm: float


def spin_calibration(
    tool_to_tracker: npt.ArrayLike,
    *,
    tip_offset_mm: npt.ArrayLike | None = None,
    min_poses: int = 8,
    min_spin_deg: float = 30.0,
    max_wobble_deg: float = 5.0,
) -> SpinResult:
    """Shaft axis of a tool spun about its shaft.

    Args:
        tool_to_tracker: (N, 4, 4) rigid tool poses, tool frame to tracker frame, mm.
        tip_offset_mm: optional (3,) tip in the tool frame (from pivot calibration), used
            to orient the axis from hub to tip.
        min_poses: fewest poses accepted.
        min_spin_deg: least rotation between the two most different poses.
        max_wobble_deg: largest accepted RMS deviation from a pure spin.

    Returns:
        :class:`SpinResult`.

    Raises:
        TypeError, ValueError: wrong types, shapes, non-rigid poses.
        CalibrationError: too few poses, too little spin, or motion that is not a spin
            about one axis (wobble above ``max_wobble_deg``).
    """
    rot, trans = as_rotations_translations(tool_to_tracker, "tool_to_tracker")
    n = len(rot)
    if n < min_poses:
        raise CalibrationError(f"spin calibration needs at least {min_poses} poses, got {n}")
    spin = angular_range_deg(rot)
    if spin < min_spin_deg:
        raise CalibrationError(
            f"too little spin: angular range {spin:.2f} deg < {min_spin_deg:.1f} deg "
            "(rotate the tool about its shaft)"
        )
    dev = rot - rot.mean(axis=0)
    m = np.einsum("nji,njk->ik", dev, dev)
    evals, evecs = np.linalg.eigh(m)
    axis = evecs[:, 0]
    if tip_offset_mm is not None:
        tip = as_array(tip_offset_mm, "tip_offset_mm")
        if tip.shape != (3,) or not np.all(np.isfinite(tip)):
            raise ValueError(f"tip_offset_mm must be 3 finite numbers, got {tip}")
        if float(axis @ tip) < 0:
            axis = -axis
    elif axis[np.argmax(np.abs(axis))] < 0:
        axis = -axis
    dirs = rot @ axis
    axis_tracker = dirs.mean(axis=0)
    axis_tracker /= np.linalg.norm(axis_tracker)
    # atan2(|a x b|, a . b): arccos of a dot product near 1 loses half the digits.
    angles = np.arctan2(np.linalg.norm(np.cross(dirs, axis_tracker), axis=1), dirs @ axis_tracker)
    wobble = float(np.degrees(np.sqrt(np.mean(angles**2))))
    if wobble > max_wobble_deg:
        raise CalibrationError(
            f"motion is not a spin about one axis: wobble {wobble:.2f} deg RMS > "
            f"{max_wobble_deg:.1f} deg (smallest/next eigenvalue {evals[0]:.3g}/{evals[1]:.3g})"
        )
    proj = np.eye(3) - np.outer(axis_tracker, axis_tracker)
    a = np.zeros((3 * n, 6))
    a[:, :3] = (proj @ rot).reshape(3 * n, 3)
    a[:, 3:] = np.tile(-proj, (n, 1))
    b = -(trans @ proj.T).reshape(3 * n)
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    p = x[:3] - (x[:3] @ axis) * axis
    c = x[3:]
    line_res = np.linalg.norm((rot @ p + trans - c) @ proj.T, axis=1)
    return SpinResult(
        axis_tool=axis,
        axis_point_tool_mm=p,
        axis_tracker=axis_tracker,
        spin_range_deg=spin,
        wobble_rms_deg=wobble,
        line_rms_mm=float(np.sqrt(np.mean(line_res**2))),
    )
