"""Temporal calibration: the lag between two streams of the same motion.

Both signals (e.g. the tracked probe position along its main motion axis, and the
same motion measured in the images) are linearly resampled on a common uniform grid;
for each candidate lag ``L`` the Pearson (normalised) cross-correlation of ``a(t)`` and
``b(t + L)`` over their overlap is computed, and the peak is refined to sub-sample
precision by fitting a parabola through the peak and its two neighbours (the
three-point estimator, e.g. Jacovitti and Scarano, IEEE TSP 41(2) 1993, eq. 7:
``delta = (c[-1] - c[+1]) / (2 (c[-1] - 2 c[0] + c[+1]))``). This is the approach of the
PLUS toolkit's temporal calibration (Lasso et al., IEEE TBME 61(10) 2014).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration._checks import as_array, as_positive
from calibration.errors import CalibrationError

__all__ = ["TemporalResult", "temporal_calibration"]


@dataclass(frozen=True, eq=False)
class TemporalResult:
    """Result of :func:`temporal_calibration`.

    Attributes:
        lag_s: how much later events appear in stream b than in stream a, seconds
            (``b(t + lag_s) ~ a(t)``); positive when b lags behind a.
        peak_correlation: normalised cross-correlation at the peak, in [-1, 1].
        step_s: resampling grid step, seconds.
        lags_s: (K,) candidate lags evaluated, seconds.
        correlation: (K,) normalised cross-correlation at each candidate lag.
        std_a: standard deviation of resampled signal a (its unit).
        std_b: standard deviation of resampled signal b (its unit).
    """

    lag_s: float
    peak_correlation: float
    step_s: float
    lags_s: npt.NDArray[np.float64]
    correlation: npt.NDArray[np.float64]
    std_a: float
    std_b: float


def _signal(t: object, x: object, name: str) -> tuple[npt.NDArray[np.float64], ...]:
    ta = as_array(t, f"{name}.t_s")
    xa = as_array(x, f"{name}.x")
    if ta.ndim != 1 or xa.ndim != 1 or len(ta) != len(xa):
        raise ValueError(
            f"{name}.t_s and {name}.x must be 1-D of equal length, got shapes "
            f"{ta.shape} and {xa.shape}"
        )
    if len(ta) < 4:
        raise CalibrationError(f"stream {name} needs at least 4 samples, got {len(ta)}")
    if not (np.all(np.isfinite(ta)) and np.all(np.isfinite(xa))):
        raise ValueError(f"stream {name} contains NaN or infinite values")
    dt = np.diff(ta)
    if np.any(dt <= 0):
        i = int(np.flatnonzero(dt <= 0)[0])
        raise ValueError(
            f"{name}.t_s must be strictly increasing, got {ta[i]} then {ta[i + 1]} at index {i}"
        )
    return ta, xa


def temporal_calibration(
    t_a_s: npt.ArrayLike,
    x_a: npt.ArrayLike,
    t_b_s: npt.ArrayLike,
    x_b: npt.ArrayLike,
    *,
    max_lag_s: float = 0.5,
    step_s: float | None = None,
    min_std: float = 0.5,
    min_correlation: float = 0.5,
) -> TemporalResult:
    """Lag of stream b behind stream a by normalised cross-correlation.

    Args:
        t_a_s, x_a: (N,) sample times (s, strictly increasing) and values of stream a.
        t_b_s, x_b: (M,) same for stream b (same unit as ``x_a``, e.g. mm).
        max_lag_s: lags searched in ``[-max_lag_s, +max_lag_s]``.
        step_s: grid step; default a quarter of the smaller median sample interval.
        min_std: least standard deviation of each signal over the overlap (its unit);
            below it the stream has not enough motion to time.
        min_correlation: least peak correlation accepted.

    Returns:
        :class:`TemporalResult`.

    Raises:
        TypeError, ValueError: wrong types or shapes, non-increasing times.
        CalibrationError: too little overlap, too little motion (reports the measured
            std), a peak at the edge of the search range, or a weak peak.
    """
    ta, xa = _signal(t_a_s, x_a, "a")
    tb, xb = _signal(t_b_s, x_b, "b")
    max_lag = as_positive(max_lag_s, "max_lag_s")
    min_std = as_positive(min_std, "min_std", allow_zero=True)
    if step_s is None:
        step = min(float(np.median(np.diff(ta))), float(np.median(np.diff(tb)))) / 4.0
    else:
        step = as_positive(step_s, "step_s")
    # Grid for a: the part of a's span where b(t + L) exists for at least some lags.
    t0, t1 = max(ta[0], tb[0] - max_lag), min(ta[-1], tb[-1] + max_lag)
    if t1 - t0 < 4 * max_lag:
        raise CalibrationError(
            f"streams overlap for {max(t1 - t0, 0.0):.3f} s, need at least "
            f"{4 * max_lag:.3f} s (4 x max_lag_s)"
        )
    grid = np.arange(t0, t1, step)
    a = np.interp(grid, ta, xa)
    std_a = float(np.std(xa[(ta >= t0) & (ta <= t1)]))
    std_b = float(np.std(xb))
    for name, std in (("a", std_a), ("b", std_b)):
        if std < min_std:
            raise CalibrationError(
                f"stream {name} has too little motion: std {std:.4g} < min_std {min_std:.4g}"
            )
    k_max = int(np.ceil(max_lag / step))
    lags = np.arange(-k_max, k_max + 1, dtype=np.float64) * step
    corr = np.full(len(lags), np.nan)
    min_overlap = max(8, len(grid) // 4)
    for i, lag in enumerate(lags):
        tq = grid + lag
        ok = (tq >= tb[0]) & (tq <= tb[-1])
        if ok.sum() < min_overlap:
            continue
        av = a[ok] - a[ok].mean()
        bv = np.interp(tq[ok], tb, xb)
        bv -= bv.mean()
        denom = np.sqrt(np.dot(av, av) * np.dot(bv, bv))
        if denom > 0:
            corr[i] = float(np.dot(av, bv) / denom)
    if np.all(np.isnan(corr)):
        raise CalibrationError("no lag in the search range has enough overlap")
    k = int(np.nanargmax(corr))
    peak = float(corr[k])
    if peak < min_correlation:
        raise CalibrationError(
            f"weak correlation peak {peak:.3f} < {min_correlation:.2f}: the streams do not "
            "show the same motion"
        )
    if k == 0 or k == len(lags) - 1 or np.isnan(corr[k - 1]) or np.isnan(corr[k + 1]):
        raise CalibrationError(
            f"correlation peak at the edge of the search range (lag {lags[k]:.3f} s); "
            f"increase max_lag_s (now {max_lag} s)"
        )
    c_m, c_0, c_p = corr[k - 1], corr[k], corr[k + 1]
    denom = c_m - 2.0 * c_0 + c_p
    delta = 0.5 * (c_m - c_p) / denom if denom < 0 else 0.0
    return TemporalResult(
        lag_s=float(lags[k] + delta * step),
        peak_correlation=peak,
        step_s=step,
        lags_s=lags,
        correlation=corr,
        std_a=std_a,
        std_b=std_b,
    )
