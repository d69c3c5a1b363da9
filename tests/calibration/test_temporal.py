"""Temporal calibration: lag by normalised cross-correlation."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import CalibrationError, temporal_calibration
from calibration.accuracy import temporal_accuracy


def _motion(t: np.ndarray) -> np.ndarray:
    return 8 * np.sin(2 * np.pi * 0.3 * t) + 4 * np.sin(2 * np.pi * 0.77 * t + 1.0)


def test_120_ms_lag_recovered_within_5_ms(rng: np.random.Generator) -> None:
    fig = temporal_accuracy(rng, n_trials=10, lag_s=0.120, tolerance_s=0.005)
    assert fig.passed, fig
    assert fig.measured <= 0.005


@pytest.mark.parametrize("lag_s", [-0.2, -0.033, 0.0, 0.07, 0.3])
def test_sign_and_value_of_the_lag(lag_s: float) -> None:
    ta = np.arange(0, 20, 1 / 50)
    tb = np.arange(0.013, 20, 1 / 30)
    res = temporal_calibration(ta, _motion(ta), tb, _motion(tb - lag_s))
    assert res.lag_s == pytest.approx(lag_s, abs=0.002)
    assert res.peak_correlation > 0.99


@pytest.mark.parametrize("lag_s", [0.127, -0.061, 0.149])
def test_sub_sample_refinement_on_a_coarse_grid(lag_s: float) -> None:
    # 20 ms grid: without the parabolic refinement the error would reach 10 ms.
    ta = np.arange(0, 20, 1 / 50)
    tb = np.arange(0.013, 20, 1 / 30)
    res = temporal_calibration(ta, _motion(ta), tb, _motion(tb - lag_s), step_s=0.02)
    assert res.step_s == 0.02
    assert res.lag_s == pytest.approx(lag_s, abs=0.001)


def test_motionless_stream_is_refused_with_its_std(rng: np.random.Generator) -> None:
    ta = np.arange(0, 20, 1 / 50)
    tb = np.arange(0, 20, 1 / 30)
    xb = 3.0 + rng.normal(0, 0.05, len(tb))
    with pytest.raises(CalibrationError, match=r"stream b has too little motion: std 0\.0\d+"):
        temporal_calibration(ta, _motion(ta), tb, xb)


def test_lag_beyond_search_range_is_refused() -> None:
    ta = np.arange(0, 20, 1 / 50)
    res_t = np.arange(0, 20, 1 / 30)
    x = np.cumsum(np.sin(ta * 1.3) ** 3)  # aperiodic-ish
    with pytest.raises(CalibrationError, match="edge of the search range"):
        temporal_calibration(ta, x, res_t, np.interp(res_t - 0.8, ta, x), max_lag_s=0.3)


def test_bad_streams() -> None:
    t = np.arange(0, 10, 0.1)
    with pytest.raises(ValueError, match=r"a\.t_s must be strictly increasing"):
        temporal_calibration(t[::-1], t, t, t)
    with pytest.raises(ValueError, match=r"equal length, got shapes \(100,\) and \(99,\)"):
        temporal_calibration(t, t[:-1], t, t)
    with pytest.raises(CalibrationError, match="overlap for"):
        temporal_calibration(t, _motion(t), t + 100, _motion(t))
