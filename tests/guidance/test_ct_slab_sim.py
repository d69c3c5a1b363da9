"""The CT control-slab simulator (guidance.sim.ct_slab) on the real CT."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.sim.ct_slab import control_scan_series, make_slab, slab_geometry
from tests.peers import require_real_ct

# The demo's automatic plan (foramen:L1-L2:left) on the real CT, LPS mm.
ENTRY = np.array([57.258, 115.279, -296.336])
TARGET = np.array([38.592, 54.224, -291.871])


@pytest.fixture(scope="module")
def ct() -> ImageVolume:
    require_real_ct()
    from guidance.data import load_real_ct

    return load_real_ct()


def _axial_needle(angle_deg: float = 0.0, length: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """A posterior approach to TARGET tilted ``angle_deg`` out of the axial plane."""
    a = math.radians(angle_deg)
    axis = np.array([0.0, -math.cos(a), math.sin(a)])  # toward anterior (and superior)
    return TARGET - axis * length, TARGET.copy()


def test_geometry_spacing_tilt_flip_and_centre(ct: ImageVolume) -> None:
    centre = np.array([10.0, 20.0, -290.0])
    m = slab_geometry(centre, n_slices=7, thickness_mm=2.0, rows=300, cols=400, pixel_mm=0.8,
                      gantry_tilt_deg=15.0, flip_i=True)
    t = math.radians(15.0)
    np.testing.assert_allclose(m[:3, 0], [-0.8, 0, 0])
    np.testing.assert_allclose(m[:3, 1], [0, 0.8 * math.cos(t), -0.8 * math.sin(t)], atol=1e-12)
    np.testing.assert_allclose(m[:3, 2], [0, 2.0 * math.sin(t), 2.0 * math.cos(t)], atol=1e-12)
    np.testing.assert_allclose(m @ [199.5, 149.5, 3.0, 1.0], [*centre, 1.0], atol=1e-9)

    entry, tip = _axial_needle()
    slab, truth = make_slab(ct, entry, tip, n_slices=7, thickness_mm=2.0, rows=300, cols=400,
                            pixel_mm=0.8, gantry_tilt_deg=15.0, flip_i=True, noise_hu=0)
    assert slab.voxels.shape == (7, 300, 400) and slab.voxels.dtype == np.int16
    np.testing.assert_allclose(slab.spacing_mm, [0.8, 0.8, 2.0])
    np.testing.assert_allclose(slab.ijk_to_lps[:3, :3], m[:3, :3], atol=1e-12)
    assert truth.tip_in_slab and truth.n_slices == 7 and truth.thickness_mm == 2.0
    np.testing.assert_allclose(slab.lps_to_ijk_points(tip[None])[0], [199.5, 149.5, 3.0],
                               atol=1e-9)
    assert slab.voxels.min() >= -1024 and slab.voxels.max() <= 3071


def test_tip_in_the_right_slice_and_needle_only_there(ct: ImageVolume) -> None:
    entry, tip = _axial_needle()
    centre = tip + np.array([0.0, 0.0, -3.0])  # one slice below: the tip is in slice 3 of 0..4
    slab, truth = make_slab(ct, entry, tip, centre_lps=centre, thickness_mm=3.0)
    k = round(float(slab.lps_to_ijk_points(tip[None])[0][2]))
    assert k == 3 and truth.tip_in_slab
    back = slab.lps_to_ijk_points((tip - truth.axis_ct_lps * 3.0)[None])[0]
    bi, bj = np.round(back[:2]).astype(int)
    assert slab.voxels[3, bj - 1:bj + 2, bi - 1:bi + 2].max() > 2000
    bare, _ = make_slab(ct, entry, tip, centre_lps=centre, needle=False)
    added = (slab.voxels > 2000) & (bare.voxels <= 2000)
    per_slice = added.sum(axis=(1, 2))
    assert per_slice[3] > 20
    assert per_slice[[0, 1, 2, 4]].sum() == 0


def test_partial_volume_on_consecutive_slices(ct: ImageVolume) -> None:
    entry, tip = _axial_needle(20.0, length=70.0)
    centre = tip + np.array([0.0, 10.0, -7.0])  # the slab around the shaft behind the tip
    slab, _ = make_slab(ct, entry, tip, centre_lps=centre, n_slices=5, thickness_mm=3.0)
    bare, _ = make_slab(ct, entry, tip, centre_lps=centre, needle=False)
    shows = ((slab.voxels > 2000) & (bare.voxels <= 2000)).sum(axis=(1, 2)) > 0
    ks = np.flatnonzero(shows)
    assert len(ks) >= 3 and np.all(np.diff(ks) == 1)
    # Through-plane, each slice shows only a short piece of the shaft (its in-plane
    # length ~ thickness / tan(20 deg) ~ 8 mm, i.e. ~ 12 pixels, not the whole needle).
    for k in ks:
        cols = np.flatnonzero(((slab.voxels[k] > 2000) & (bare.voxels[k] <= 2000)).any(axis=1))
        assert np.ptp(cols) * slab.spacing_mm[1] < 20.0


def test_motion_moves_bone_as_ct_to_scanner_says(ct: ImageVolume) -> None:
    entry, tip = _axial_needle()
    move = np.eye(4)
    move[0, 3] = 10.0  # the patient moved 10 mm toward L
    kw = {"centre_lps": tip, "pixel_mm": 1.0, "noise_hu": 0.0, "needle": False}
    still, t0 = make_slab(ct, entry, tip, **kw)  # type: ignore[arg-type]
    moved, t1 = make_slab(ct, entry, tip, ct_to_scanner=move, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(t1.tip_scanner_lps, tip + np.array([10.0, 0, 0]))
    np.testing.assert_allclose(t0.tip_scanner_lps, tip)
    # The brightest bone voxel of the still slab is 10 columns (10 mm, +L = +i) further on.
    v = still.voxels[:, 50:-50, 50:-50]
    k, j, i = np.unravel_index(int(np.argmax(v)), v.shape)
    j, i = j + 50, i + 50
    assert still.voxels[k, j, i] > 700
    assert abs(int(moved.voxels[k, j, i + 10]) - int(still.voxels[k, j, i])) <= 1
    assert abs(int(moved.voxels[k, j, i]) - int(still.voxels[k, j, i])) > 50
    # The needle moves with the anatomy: it is found around the moved tip.
    with_needle, _ = make_slab(ct, entry, tip, ct_to_scanner=move, centre_lps=tip,
                               pixel_mm=1.0)
    p = with_needle.lps_to_ijk_points((tip + np.array([10.0, 3.0, 0.0]))[None])[0]
    pi, pj, pk = np.round(p).astype(int)
    assert with_needle.voxels[pk, pj - 1:pj + 2, pi - 1:pi + 2].max() > 2000


def test_tip_not_in_slab_when_centred_20mm_away(ct: ImageVolume) -> None:
    entry, tip = _axial_needle()
    _, truth = make_slab(ct, entry, tip, centre_lps=tip + np.array([0.0, 0.0, 20.0]))
    assert not truth.tip_in_slab
    _, truth = make_slab(ct, entry, tip, centre_lps=tip + np.array([0.0, 0.0, 5.0]))
    assert truth.tip_in_slab


def test_no_needle_means_nothing_metal_near_the_path(ct: ImageVolume) -> None:
    entry, tip = _axial_needle()
    slab, truth = make_slab(ct, entry, tip, needle=False)
    assert not truth.needle
    pts = entry + np.linspace(-30.0, 60.0, 50)[:, None] * truth.axis_ct_lps
    ijk = np.round(slab.lps_to_ijk_points(pts)).astype(int)
    for i, j, k in ijk:
        assert slab.voxels[k, max(j - 3, 0):j + 4, max(i - 3, 0):i + 4].max() < 2500


def test_deterministic_and_fast(ct: ImageVolume) -> None:
    entry, tip = _axial_needle(10.0)
    a, _ = make_slab(ct, entry, tip, rng=np.random.default_rng(3))
    t0 = time.perf_counter()
    b, _ = make_slab(ct, entry, tip, rng=np.random.default_rng(3))
    elapsed = time.perf_counter() - t0
    c, _ = make_slab(ct, entry, tip, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a.voxels, b.voxels)
    assert not np.array_equal(a.voxels, c.voxels)
    assert elapsed < 2.0


def test_control_scan_series(ct: ImageVolume) -> None:
    move = np.eye(4)
    move[:3, 3] = [5.0, 0.0, 0.0]
    scans = list(control_scan_series(ct, ENTRY, TARGET, steps=4, motion=move, seed=1,
                                     rows=256, cols=256))
    length = float(np.linalg.norm(TARGET - ENTRY))
    depths = [float(np.linalg.norm(t.tip_ct_lps - ENTRY)) for _, t in scans]
    assert len(scans) == 4
    assert 0.25 * length < depths[0] < 0.42 * length
    assert all(np.diff(depths) > 0)
    np.testing.assert_allclose(scans[-1][1].tip_ct_lps, TARGET, atol=1e-9)
    assert [np.allclose(t.ct_to_scanner, np.eye(4)) for _, t in scans] == [True, True,
                                                                           False, False]
    assert all(t.tip_in_slab for _, t in scans)
    again = list(control_scan_series(ct, ENTRY, TARGET, steps=4, motion=move, seed=1,
                                     rows=256, cols=256))
    for (a, _), (b, _) in zip(scans, again, strict=True):
        np.testing.assert_array_equal(a.voxels, b.voxels)
    drift = list(control_scan_series(ct, ENTRY, TARGET, steps=2, deviation_deg=8.0,
                                     rows=128, cols=128))
    miss = float(np.linalg.norm(drift[-1][1].tip_ct_lps - TARGET))
    assert miss == pytest.approx(2 * length * math.sin(math.radians(4.0)), rel=1e-6)
    cos = float(drift[-1][1].axis_ct_lps @ (TARGET - ENTRY)) / length
    assert math.degrees(math.acos(cos)) == pytest.approx(8.0, abs=1e-6)


def test_bad_arguments(ct: ImageVolume) -> None:
    with pytest.raises(ValueError, match="apart"):
        make_slab(ct, TARGET, TARGET)
    with pytest.raises(ValueError, match="rigid"):
        make_slab(ct, ENTRY, TARGET, ct_to_scanner=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="n_slices"):
        make_slab(ct, ENTRY, TARGET, n_slices=0)
    with pytest.raises(ValueError, match="steps"):
        next(control_scan_series(ct, ENTRY, TARGET, steps=0))
