"""Needle tracking filter: tip and axis in LPS from image detections and tracker poses.

A linear Kalman filter (Kalman 1960) with state ``[tip (3), velocity (3), axis (3)]``:
the tip follows a constant-velocity model with discrete white-noise acceleration
(Bar-Shalom, Li and Kirubarajan, "Estimation with Applications to Tracking and
Navigation", 2001, section 6.3.3, ``Q = sigma_a^2 G G^T`` with ``G = [dt^2/2, dt]``); the
axis is a random walk, re-normalised after each update. Each measurement carries its own
noise (``sigma_mm`` for the tip; the axis noise is ``sigma_mm / axis_baseline_mm`` rad
unless given), so image detections and tracker poses can be mixed.

Outliers are gated on the Mahalanobis distance of the innovation,
``d^2 = y^T S^-1 y`` against the chi-square quantile for 6 degrees of freedom
(Bar-Shalom et al. section 5.4.2); a rejected measurement leaves the state as
predicted. Confidence in [0, 1] is the product of three factors: track maturity
(accepted measurements since the track started / ``min_hits``), ``exp(-age / decay_s)``
with ``age`` the time since the last accepted measurement, and
``exp(-max(NIS / 6 - 1, 0) / 2)`` with NIS the exponentially averaged normalised
innovation squared (1 while innovations match the declared noise, lower when they do
not). The speed estimate ``|velocity|`` (mm/s) is what the safety margins multiply by the
latency.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2

__all__ = ["NeedleEstimate", "NeedleFilter", "measurement_from_pose"]

_log = logging.getLogger(__name__)
_DOF = 6
_H = np.zeros((6, 9))
_H[:3, :3] = np.eye(3)
_H[3:, 6:] = np.eye(3)


@dataclass(frozen=True, eq=False)
class NeedleEstimate:
    """The needle at one time.

    Attributes:
        tip_lps: (3,) float64 tip position, LPS mm.
        axis_lps: (3,) float64 unit direction, LPS, pointing from hub to tip.
        speed_mm_s: estimated tip speed, mm/s.
        confidence: in [0, 1]; see the module docstring.
        t_s: time of the estimate, seconds (the caller's clock: local monotonic).
        accepted: whether the measurement of this update was used (False for a gated
            outlier, and for :meth:`NeedleFilter.predict`).
        innovation_mm: distance between the measured and predicted tip, mm (0 for a
            prediction or a track start).
        tip_sigma_mm: largest standard deviation of the tip estimate, mm.
        source: source of the last measurement considered (``"image"``, ``"tracker"``...).
    """

    tip_lps: npt.NDArray[np.float64]
    axis_lps: npt.NDArray[np.float64]
    speed_mm_s: float
    confidence: float
    t_s: float
    accepted: bool
    innovation_mm: float
    tip_sigma_mm: float = 0.0
    source: str = ""


def _vec3(value: object, name: str) -> npt.NDArray[np.float64]:
    if value is None or isinstance(value, (str, bytes, dict)):
        raise TypeError(f"{name} must be 3 numbers, got {type(value).__name__}")
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (3,):
        raise ValueError(f"{name} must have shape (3,), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values: {arr}")
    return arr


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {v}")
    return v


def measurement_from_pose(
    needle_to_lps: npt.ArrayLike, tip_offset_mm: npt.ArrayLike, axis_needle: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Tip and axis in LPS from a tracked needle pose and its calibration.

    Args:
        needle_to_lps: (4, 4) needle (marker) frame to LPS mm (composed by the transform
            graph, e.g. ``graph.query("Needle", "LPS").matrix``).
        tip_offset_mm: (3,) tip in the needle frame (pivot calibration), mm.
        axis_needle: (3,) shaft direction in the needle frame, hub to tip (spin
            calibration).

    Returns:
        ``(tip_lps (3,), axis_lps (3,) unit)``.
    """
    m = np.asarray(needle_to_lps, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"needle_to_lps must be 4x4, got shape {m.shape}")
    tip = _vec3(tip_offset_mm, "tip_offset_mm")
    axis = _vec3(axis_needle, "axis_needle")
    norm = float(np.linalg.norm(axis))
    if norm < 1e-9:
        raise ValueError(f"axis_needle must be non-zero, got {axis}")
    return m[:3, :3] @ tip + m[:3, 3], m[:3, :3] @ (axis / norm)


class NeedleFilter:
    """Constant-velocity Kalman filter of the needle tip and axis (LPS mm).

    Not thread-safe: one pipeline stage owns it.

    Args:
        accel_sigma_mm_s2: standard deviation of the tip acceleration, mm/s^2.
        axis_rate_sigma: random-walk intensity of the axis, rad / sqrt(s).
        initial_speed_sigma_mm_s: prior standard deviation of the velocity at track start.
        axis_baseline_mm: length over which the axis is measured; the default axis noise
            of a measurement is ``sigma_mm / axis_baseline_mm`` rad.
        gate_probability: chi-square gate probability; measurements beyond its quantile
            (6 dof) are rejected.
        confidence_decay_s: time constant of the confidence decay without accepted
            measurements, seconds.
        lost_after_s: without an accepted measurement for this long, :meth:`predict`
            returns None and the next measurement starts a new track.
        restart_after_rejections: this many consecutive rejections start a new track at
            the next measurement (the needle was withdrawn and re-inserted).
        min_hits: accepted measurements for full maturity.
        nis_smoothing: weight of the newest NIS in its exponential average.
    """

    def __init__(
        self,
        *,
        accel_sigma_mm_s2: float = 20.0,
        axis_rate_sigma: float = 0.05,
        initial_speed_sigma_mm_s: float = 20.0,
        axis_baseline_mm: float = 40.0,
        gate_probability: float = 0.999,
        confidence_decay_s: float = 0.5,
        lost_after_s: float = 2.0,
        restart_after_rejections: int = 5,
        min_hits: int = 3,
        nis_smoothing: float = 0.3,
    ) -> None:
        self.accel_sigma_mm_s2 = _positive(accel_sigma_mm_s2, "accel_sigma_mm_s2")
        self.axis_rate_sigma = _positive(axis_rate_sigma, "axis_rate_sigma")
        self.initial_speed_sigma_mm_s = _positive(
            initial_speed_sigma_mm_s, "initial_speed_sigma_mm_s"
        )
        self.axis_baseline_mm = _positive(axis_baseline_mm, "axis_baseline_mm")
        p = _positive(gate_probability, "gate_probability")
        if p >= 1.0:
            raise ValueError(f"gate_probability must be < 1, got {p}")
        self.gate_d2 = float(chi2.ppf(p, _DOF))
        self.confidence_decay_s = _positive(confidence_decay_s, "confidence_decay_s")
        self.lost_after_s = _positive(lost_after_s, "lost_after_s")
        if isinstance(restart_after_rejections, bool) or not isinstance(
            restart_after_rejections, int
        ):
            raise TypeError("restart_after_rejections must be an int")
        if restart_after_rejections < 1:
            raise ValueError(
                f"restart_after_rejections must be >= 1, got {restart_after_rejections}"
            )
        self.restart_after_rejections = restart_after_rejections
        if isinstance(min_hits, bool) or not isinstance(min_hits, int) or min_hits < 1:
            raise ValueError(f"min_hits must be an int >= 1, got {min_hits!r}")
        self.min_hits = min_hits
        a = _positive(nis_smoothing, "nis_smoothing")
        if a > 1.0:
            raise ValueError(f"nis_smoothing must be in (0, 1], got {a}")
        self.nis_smoothing = a
        self._x = np.zeros(9)
        self._p = np.eye(9)
        self._t = 0.0
        self._t_accepted = 0.0
        self._hits = 0
        self._rejections = 0
        self._nis = float(_DOF)
        self._initialised = False
        self._source = ""
        #: Measurements dropped because older than the filter time.
        self.out_of_order = 0
        #: Measurements rejected by the gate.
        self.rejected = 0

    # -- model ---------------------------------------------------------------------------

    def _transition(self, dt: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        f = np.eye(9)
        f[:3, 3:6] = dt * np.eye(3)
        q = np.zeros((9, 9))
        s2 = self.accel_sigma_mm_s2**2
        q[:3, :3] = s2 * dt**4 / 4.0 * np.eye(3)
        q[:3, 3:6] = q[3:6, :3] = s2 * dt**3 / 2.0 * np.eye(3)
        q[3:6, 3:6] = s2 * dt**2 * np.eye(3)
        q[6:, 6:] = self.axis_rate_sigma**2 * dt * np.eye(3)
        return f, q

    def _predicted(self, t_s: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        dt = max(t_s - self._t, 0.0)
        f, q = self._transition(dt)
        return f @ self._x, f @ self._p @ f.T + q

    def _start(
        self,
        tip: npt.NDArray[np.float64],
        axis: npt.NDArray[np.float64],
        t_s: float,
        sigma: float,
        sigma_axis: float,
    ) -> None:
        self._x = np.concatenate([tip, np.zeros(3), axis])
        self._p = np.diag(
            [sigma**2] * 3 + [self.initial_speed_sigma_mm_s**2] * 3 + [sigma_axis**2] * 3
        )
        self._t = self._t_accepted = t_s
        self._hits = 1
        self._rejections = 0
        self._nis = float(_DOF)
        self._initialised = True

    def _confidence(self, t_s: float) -> float:
        maturity = min(1.0, self._hits / self.min_hits)
        age = max(t_s - self._t_accepted, 0.0)
        decay = float(np.exp(-age / self.confidence_decay_s))
        consistency = float(np.exp(-0.5 * max(self._nis / _DOF - 1.0, 0.0)))
        return float(np.clip(maturity * decay * consistency, 0.0, 1.0))

    def _estimate(
        self,
        x: npt.NDArray[np.float64],
        p: npt.NDArray[np.float64],
        t_s: float,
        accepted: bool,
        innovation_mm: float,
    ) -> NeedleEstimate:
        axis = x[6:]
        axis = axis / np.linalg.norm(axis)
        return NeedleEstimate(
            tip_lps=x[:3].copy(),
            axis_lps=axis,
            speed_mm_s=float(np.linalg.norm(x[3:6])),
            confidence=self._confidence(t_s),
            t_s=t_s,
            accepted=accepted,
            innovation_mm=innovation_mm,
            tip_sigma_mm=float(np.sqrt(np.linalg.eigvalsh(p[:3, :3])[-1])),
            source=self._source,
        )

    # -- public API ----------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        """True once a track exists (it may since have been lost)."""
        return self._initialised

    def reset(self) -> None:
        """Forget the track."""
        self._initialised = False
        self._hits = 0

    def update(
        self,
        tip_lps: npt.ArrayLike,
        axis_lps: npt.ArrayLike,
        t_s: float,
        source: str,
        sigma_mm: float,
        *,
        axis_sigma_rad: float | None = None,
    ) -> NeedleEstimate | None:
        """Fuse one measurement of the needle.

        Args:
            tip_lps: (3,) measured tip, LPS mm.
            axis_lps: (3,) measured direction, hub to tip (normalised here; a measurement
                pointing against the track's axis is flipped, as a line fit may not know
                its sign).
            t_s: measurement time, seconds (local monotonic clock of the caller).
            source: where it came from, e.g. ``"image"`` or ``"tracker"``.
            sigma_mm: tip measurement noise (1 sigma per axis), mm.
            axis_sigma_rad: axis noise; default ``sigma_mm / axis_baseline_mm``.

        Returns:
            The estimate at ``t_s`` (``accepted`` False when the measurement was gated
            out), or ``None`` when the measurement is older than the filter's time (out
            of order; counted in :attr:`out_of_order`).

        Raises:
            TypeError, ValueError: bad shapes, non-finite values, zero axis, bad sigma.
        """
        tip = _vec3(tip_lps, "tip_lps")
        axis = _vec3(axis_lps, "axis_lps")
        norm = float(np.linalg.norm(axis))
        if norm < 1e-9:
            raise ValueError(f"axis_lps must be non-zero, got {axis}")
        axis = axis / norm
        if isinstance(t_s, bool) or not isinstance(t_s, numbers.Real) or not np.isfinite(t_s):
            raise ValueError(f"t_s must be a finite number, got {t_s!r}")
        t = float(t_s)
        if not isinstance(source, str):
            raise TypeError(f"source must be a str, got {type(source).__name__}")
        sigma = _positive(sigma_mm, "sigma_mm")
        sigma_axis = (
            sigma / self.axis_baseline_mm
            if axis_sigma_rad is None
            else _positive(axis_sigma_rad, "axis_sigma_rad")
        )
        self._source = source
        if not self._initialised or t - self._t_accepted > self.lost_after_s:
            self._start(tip, axis, t, sigma, sigma_axis)
            return self._estimate(self._x, self._p, t, True, 0.0)
        if t < self._t - 1e-9:
            self.out_of_order += 1
            _log.debug("out-of-order needle measurement at %.4f s < %.4f s", t, self._t)
            return None
        x, p = self._predicted(t)
        if float(axis @ x[6:]) < 0:
            axis = -axis
        r = np.diag([sigma**2] * 3 + [sigma_axis**2] * 3)
        y = np.concatenate([tip, axis]) - _H @ x
        s = _H @ p @ _H.T + r
        d2 = float(y @ np.linalg.solve(s, y))
        innovation_mm = float(np.linalg.norm(y[:3]))
        self._t = t
        a = self.nis_smoothing
        if d2 > self.gate_d2:
            self.rejected += 1
            self._rejections += 1
            self._x, self._p = x, p
            self._nis = (1 - a) * self._nis + a * self.gate_d2
            if self._rejections >= self.restart_after_rejections:
                _log.info("needle track restarted after %d rejected measurements", self._rejections)
                self._start(tip, axis, t, sigma, sigma_axis)
                return self._estimate(self._x, self._p, t, True, innovation_mm)
            return self._estimate(x, p, t, False, innovation_mm)
        k = np.linalg.solve(s, _H @ p).T  # P H^T S^-1 (S symmetric)
        x = x + k @ y
        i_kh = np.eye(9) - k @ _H
        p = i_kh @ p @ i_kh.T + k @ r @ k.T  # Joseph form: stays symmetric positive
        x[6:] /= np.linalg.norm(x[6:])
        self._x, self._p = x, p
        self._t_accepted = t
        self._hits += 1
        self._rejections = 0
        self._nis = (1 - a) * self._nis + a * d2
        return self._estimate(x, p, t, True, innovation_mm)

    def predict(self, t_s: float) -> NeedleEstimate | None:
        """The estimate extrapolated to ``t_s`` (state unchanged).

        Returns ``None`` when there is no track or it was lost (no accepted measurement
        for ``lost_after_s``). A ``t_s`` before the filter time returns the filter-time
        state (no back-extrapolation) with the confidence judged at ``t_s``.
        """
        if isinstance(t_s, bool) or not isinstance(t_s, numbers.Real) or not np.isfinite(t_s):
            raise ValueError(f"t_s must be a finite number, got {t_s!r}")
        t = float(t_s)
        if not self._initialised or t - self._t_accepted > self.lost_after_s:
            return None
        x, p = self._predicted(t)
        return self._estimate(x, p, t, False, 0.0)
