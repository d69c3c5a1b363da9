"""Monte-Carlo accuracy checks of the calibration methods against known ground truth.

Each check simulates data from a known geometry with injected noise (the ``rng`` is
passed in, so the figures are reproducible), runs the calibration, and reports the
measured error next to the acceptance bound or the theoretical prediction. Pure numpy:
the CLI (``guidance calibrate accuracy``) prints these figures and the tests assert them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial.transform import Rotation

from calibration.carm import carm_calibration
from calibration.pivot import pivot_calibration
from calibration.registration import expected_tre, register_points
from calibration.temporal import temporal_calibration

__all__ = [
    "AccuracyFigure",
    "carm_accuracy",
    "pivot_accuracy",
    "registration_accuracy",
    "run_all",
    "simulate_pivot_poses",
    "temporal_accuracy",
]


@dataclass(frozen=True)
class AccuracyFigure:
    """One measured accuracy figure.

    Attributes:
        name: which check (``pivot``, ``registration``, ``temporal``, ``carm``).
        measured: the measured figure (unit in ``unit``).
        reference: what it is compared with (a bound or a prediction, same unit).
        unit: unit of ``measured`` and ``reference``.
        passed: whether the acceptance criterion holds.
        criterion: the acceptance criterion in words.
        details: extra figures as (label, value) pairs.
    """

    name: str
    measured: float
    reference: float
    unit: str
    passed: bool
    criterion: str
    details: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "measured": self.measured,
            "reference": self.reference,
            "unit": self.unit,
            "passed": self.passed,
            "criterion": self.criterion,
            "details": dict(self.details),
        }


def simulate_pivot_poses(
    rng: np.random.Generator,
    n_poses: int,
    tip_offset_mm: npt.NDArray[np.float64],
    pivot_point_mm: npt.NDArray[np.float64],
    *,
    noise_rms_mm: float = 0.0,
    max_tilt_deg: float = 30.0,
    max_spin_deg: float = 45.0,
) -> npt.NDArray[np.float64]:
    """(N, 4, 4) tool_to_tracker poses pivoting about ``pivot_point_mm``.

    Tilts are uniform in a cone of ``max_tilt_deg`` about a base orientation pointing the
    tool at the tracker, spins uniform in +-``max_spin_deg``; isotropic Gaussian noise of
    3D RMS ``noise_rms_mm`` (per axis ``noise_rms_mm / sqrt(3)``) is added to the
    translations.
    """
    base = Rotation.from_euler("xyz", [180.0, 0.0, 30.0], degrees=True)
    phi = rng.uniform(0.0, 2 * np.pi, n_poses)
    tilt = np.radians(rng.uniform(0.0, max_tilt_deg, n_poses))
    spin = np.radians(rng.uniform(-max_spin_deg, max_spin_deg, n_poses))
    tilt_axes = np.column_stack([np.cos(phi), np.sin(phi), np.zeros(n_poses)])
    spins = np.column_stack([np.zeros(n_poses), np.zeros(n_poses), spin])
    rot = (
        base * Rotation.from_rotvec(tilt_axes * tilt[:, None]) * Rotation.from_rotvec(spins)
    ).as_matrix()
    poses = np.tile(np.eye(4), (n_poses, 1, 1))
    poses[:, :3, :3] = rot
    poses[:, :3, 3] = pivot_point_mm - rot @ tip_offset_mm
    poses[:, :3, 3] += rng.normal(0.0, noise_rms_mm / np.sqrt(3.0), (n_poses, 3))
    return poses


def pivot_accuracy(
    rng: np.random.Generator,
    *,
    n_trials: int = 500,
    n_poses: int = 60,
    noise_rms_mm: float = 0.25,
    bound_mm: float = 0.3,
) -> AccuracyFigure:
    """Tip-offset error of pivot calibration; passes when the 95th percentile over trials
    is within ``bound_mm``."""
    tip = np.array([3.0, -2.0, -160.0])
    pivot = np.array([120.0, -40.0, -1400.0])
    errors = np.empty(n_trials)
    rms = np.empty(n_trials)
    for i in range(n_trials):
        res = pivot_calibration(
            simulate_pivot_poses(rng, n_poses, tip, pivot, noise_rms_mm=noise_rms_mm)
        )
        errors[i] = np.linalg.norm(res.tip_offset_mm - tip)
        rms[i] = res.rms_mm
    p95 = float(np.percentile(errors, 95))
    return AccuracyFigure(
        name="pivot",
        measured=p95,
        reference=bound_mm,
        unit="mm",
        passed=p95 <= bound_mm,
        criterion=(
            f"95th percentile tip error over {n_trials} trials <= {bound_mm} mm "
            f"({n_poses} poses, {noise_rms_mm} mm 3D RMS tracker noise)"
        ),
        details=(
            ("tip_error_rms_mm", float(np.sqrt(np.mean(errors**2)))),
            ("tip_error_max_mm", float(errors.max())),
            ("residual_rms_mm_mean", float(rms.mean())),
        ),
    )


def registration_accuracy(
    rng: np.random.Generator,
    *,
    n_trials: int = 2000,
    fle_rms_mm: float = 1.0,
    tolerance: float = 0.05,
) -> AccuracyFigure:
    """Monte-Carlo RMS TRE against the Fitzpatrick 1998 prediction at several targets.

    Eight fiducials near the corners of a 120 x 100 x 80 mm box; targets at the
    centroid and at 60, 120 and 200 mm from it. Isotropic noise of 3D RMS ``fle_rms_mm``
    on the fixed fiducials; a random rigid motion per trial. Passes when every target's
    measured RMS TRE is within ``tolerance`` (relative) of the prediction.
    """
    fid = np.array([[x, y, z] for x in (-60.0, 60.0) for y in (-50.0, 50.0) for z in (-40.0, 40.0)])
    fid += np.array([[3, -2, 1], [-4, 1, 2], [2, 3, -3], [-1, -4, 2]] * 2, dtype=float)
    centroid = fid.mean(axis=0)
    targets = centroid + np.array(
        [[0.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 85.0, 85.0], [120.0, 120.0, 93.8]]
    )
    predicted = expected_tre(fid, targets, fle_rms_mm)
    sq = np.zeros(len(targets))
    sigma = fle_rms_mm / np.sqrt(3.0)
    fre_sq = 0.0
    for _ in range(n_trials):
        m2f = np.eye(4)
        m2f[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        m2f[:3, 3] = rng.uniform(-200.0, 200.0, 3)
        f2m = np.linalg.inv(m2f)
        moving = fid @ f2m[:3, :3].T + f2m[:3, 3]
        noisy_fixed = fid + rng.normal(0.0, sigma, fid.shape)
        res = register_points(noisy_fixed, moving, fle_mm=fle_rms_mm)
        est = res.moving_to_fixed @ f2m
        mapped = targets @ est[:3, :3].T + est[:3, 3]
        sq += np.sum((mapped - targets) ** 2, axis=1)
        fre_sq += res.fre_mm**2
    measured = np.sqrt(sq / n_trials)
    rel = measured / predicted - 1.0
    worst = int(np.argmax(np.abs(rel)))
    details: list[tuple[str, float]] = []
    for j in range(len(targets)):
        details.append((f"target{j}_measured_tre_mm", float(measured[j])))
        details.append((f"target{j}_predicted_tre_mm", float(predicted[j])))
    details.append(("fre_rms_mm", float(np.sqrt(fre_sq / n_trials))))
    details.append(("fre_predicted_mm", float(fle_rms_mm * np.sqrt(1 - 2 / len(fid)))))
    return AccuracyFigure(
        name="registration",
        measured=float(rel[worst]),
        reference=tolerance,
        unit="relative",
        passed=bool(np.all(np.abs(rel) <= tolerance)),
        criterion=(
            f"|measured RMS TRE / Fitzpatrick prediction - 1| <= {tolerance} at every "
            f"target ({n_trials} trials, {len(fid)} fiducials, FLE {fle_rms_mm} mm RMS)"
        ),
        details=tuple(details),
    )


def _motion(
    rng: np.random.Generator, n_components: int = 6
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Random smooth hand-like motion: sinusoids of 0.1-1.5 Hz, 2-10 mm amplitude."""
    freqs = rng.uniform(0.1, 1.5, n_components)
    amps = rng.uniform(2.0, 10.0, n_components)
    phases = rng.uniform(0.0, 2 * np.pi, n_components)
    return freqs, amps, phases


def _eval_motion(
    params: tuple[npt.NDArray[np.float64], ...], t: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    freqs, amps, phases = params
    out: npt.NDArray[np.float64] = np.sum(
        amps * np.sin(2 * np.pi * freqs * t[:, None] + phases), axis=1
    )
    return out


def temporal_accuracy(
    rng: np.random.Generator,
    *,
    n_trials: int = 20,
    lag_s: float = 0.120,
    tolerance_s: float = 0.005,
    duration_s: float = 30.0,
) -> AccuracyFigure:
    """Lag recovery: a 60 Hz tracker stream (0.2 mm noise, 1 ms jitter) against a 25 Hz
    image stream (0.5 mm noise, 3 ms jitter) delayed by ``lag_s``; passes when the largest
    absolute error over trials is within ``tolerance_s``."""
    errors = np.empty(n_trials)
    for i in range(n_trials):
        params = _motion(rng)
        ta = np.arange(0.0, duration_s, 1 / 60) + rng.uniform(-0.001, 0.001)
        ta = np.sort(ta + rng.normal(0.0, 0.001, len(ta)))
        tb = np.arange(0.0, duration_s, 1 / 25)
        tb = np.sort(tb + rng.normal(0.0, 0.003, len(tb)))
        xa = _eval_motion(params, ta) + rng.normal(0.0, 0.2, len(ta))
        xb = _eval_motion(params, tb - lag_s) + rng.normal(0.0, 0.5, len(tb))
        errors[i] = temporal_calibration(ta, xa, tb, xb).lag_s - lag_s
    worst = float(np.max(np.abs(errors)))
    return AccuracyFigure(
        name="temporal",
        measured=worst,
        reference=tolerance_s,
        unit="s",
        passed=worst <= tolerance_s,
        criterion=(
            f"max |estimated - true lag| over {n_trials} trials <= {tolerance_s} s "
            f"(true lag {lag_s} s)"
        ),
        details=(
            ("lag_error_mean_s", float(errors.mean())),
            ("lag_error_rms_s", float(np.sqrt(np.mean(errors**2)))),
        ),
    )


def carm_accuracy(
    rng: np.random.Generator,
    *,
    n_trials: int = 20,
    n_points: int = 100,
    noise_px: float = 0.5,
    tolerance: float = 0.10,
) -> AccuracyFigure:
    """Reprojection RMS of the C-arm calibration against the injected 2D noise.

    A 1000 mm source-detector geometry (f ~ 3300 px, 1024 x 1024 image) views points in a
    100 mm cube 600 mm from the source; Gaussian noise of ``noise_px`` per axis is added
    to the detections, i.e. an injected 2D RMS of ``noise_px * sqrt(2)``. With 11 fitted
    parameters the expected residual RMS is ``noise_px * sqrt(2) * sqrt(1 - 11 / (2 N))``
    (least-squares residual degrees of freedom); both ratios are reported and the check
    passes when the pooled RMS is within ``tolerance`` of the injected 2D RMS.
    """
    k = np.array([[3300.0, 0.0, 512.0], [0.0, 3300.0, 512.0], [0.0, 0.0, 1.0]])
    sq = 0.0
    for _ in range(n_trials):
        rot = Rotation.random(random_state=rng).as_matrix()
        pts = rng.uniform(-50.0, 50.0, (n_points, 3))
        pose_t = np.array([0.0, 0.0, 600.0]) + rng.normal(0.0, 5.0, 3)
        proj = k @ np.column_stack([rot, pose_t])
        h = pts @ proj[:, :3].T + proj[:, 3]
        px = h[:, :2] / h[:, 2:3] + rng.normal(0.0, noise_px, (n_points, 2))
        res = carm_calibration(pts, px)
        sq += float(np.sum(res.residuals_px**2))
    rms = float(np.sqrt(sq / (n_trials * n_points)))
    injected = noise_px * np.sqrt(2.0)
    expected = injected * np.sqrt(1.0 - 11.0 / (2.0 * n_points))
    ratio = rms / injected
    return AccuracyFigure(
        name="carm",
        measured=rms,
        reference=float(injected),
        unit="px",
        passed=bool(abs(ratio - 1.0) <= tolerance),
        criterion=(
            f"pooled reprojection RMS within {tolerance:.0%} of the injected 2D noise RMS "
            f"({n_trials} trials x {n_points} points, {noise_px} px per axis)"
        ),
        details=(
            ("ratio_to_injected", float(ratio)),
            ("expected_rms_px_dof_corrected", float(expected)),
            ("ratio_to_dof_corrected", float(rms / expected)),
        ),
    )


def run_all(rng: np.random.Generator) -> tuple[AccuracyFigure, ...]:
    """All four checks with their default trial counts (about 2 s of CPU)."""
    return (
        pivot_accuracy(rng),
        registration_accuracy(rng),
        temporal_accuracy(rng),
        carm_accuracy(rng),
    )
