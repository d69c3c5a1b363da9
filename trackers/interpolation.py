"""Rigid-pose interpolation between two tracked samples: linear translation, SLERP rotation.

Rotations are interpolated on unit quaternions along the great arc (Shoemake, "Animating
rotation with quaternion curves", SIGGRAPH 1985, eq. for ``slerp``), taking the shorter
arc (``q`` and ``-q`` are the same rotation). Quaternions come from the matrix by
Shepperd's method (J. Guidance and Control 1(3), 1978), which stays accurate for every
rotation angle. Pure numpy, no allocation beyond a few small arrays: it runs once per
live edge per guidance update.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["interpolate_rigid", "matrix_from_quat", "quat_from_matrix"]

F64 = npt.NDArray[np.float64]


def quat_from_matrix(r: F64) -> F64:
    """Unit quaternion ``(w, x, y, z)`` of a (3, 3) rotation matrix (Shepperd 1978)."""
    t = r[0, 0] + r[1, 1] + r[2, 2]
    diag = (t, r[0, 0], r[1, 1], r[2, 2])
    k = int(np.argmax(diag))
    if k == 0:
        s = math.sqrt(1.0 + t) * 2.0
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif k == 1:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2.0
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif k == 2:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2.0
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2.0
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    out = np.array(q, dtype=np.float64)
    return out / np.linalg.norm(out)


def matrix_from_quat(q: F64) -> F64:
    """(3, 3) rotation matrix of a quaternion ``(w, x, y, z)`` (normalised here)."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def interpolate_rigid(a: F64, b: F64, w: float) -> F64:
    """The rigid transform a fraction ``w`` of the way from ``a`` to ``b``.

    Args:
        a, b: (4, 4) rigid transforms (same ``from`` and ``to`` frames), mm.
        w: 0 gives ``a``, 1 gives ``b``; values outside [0, 1] extrapolate along the
            same arc and line (callers bound how far).

    Returns:
        (4, 4) float64: translation ``(1 - w) t_a + w t_b``, rotation the SLERP of the
        two rotations.
    """
    qa = quat_from_matrix(a[:3, :3])
    qb = quat_from_matrix(b[:3, :3])
    dot = float(qa @ qb)
    if dot < 0.0:  # the shorter arc
        qb = -qb
        dot = -dot
    if dot > 0.9995:  # nearly the same rotation: normalised lerp is exact to 1e-7
        q = qa + w * (qb - qa)
    else:
        theta = math.acos(min(dot, 1.0))
        s = math.sin(theta)
        q = (math.sin((1.0 - w) * theta) / s) * qa + (math.sin(w * theta) / s) * qb
    out = np.eye(4)
    out[:3, :3] = matrix_from_quat(q)
    out[:3, 3] = (1.0 - w) * a[:3, 3] + w * b[:3, 3]
    return out
