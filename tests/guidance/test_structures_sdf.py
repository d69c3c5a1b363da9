"""Signed distance fields and structure sets on analytic phantoms (exact distances)."""

from __future__ import annotations

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.planning.config import StructureConfig, StructureSpec
from guidance.planning.sdf import compute_sdf
from guidance.planning.structures import build_structures


def _grid(shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float]) -> np.ndarray:
    m = np.diag([*spacing_ijk, 1.0])
    m[:3, 3] = [-10.0, 5.0, 20.0]
    return m


def _sphere_phantom(spacing: tuple[float, float, float], radius: float,
                    centre: np.ndarray) -> ImageVolume:
    shape = (int(80 / spacing[2]), int(80 / spacing[1]), int(80 / spacing[0]))
    m = _grid(shape, spacing)
    vol = ImageVolume(np.zeros(shape, np.uint8), m)
    k, j, i = np.indices(shape)
    pts = vol.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    inside = np.linalg.norm(pts - centre, axis=1) <= radius
    return ImageVolume(inside.reshape(shape).astype(np.uint8), m)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_sphere_sdf_matches_analytic_distance(spacing: tuple[float, float, float]) -> None:
    centre = np.array([30.0, 45.0, 60.0])
    radius = 12.0
    vol = _sphere_phantom(spacing, radius, centre)
    sdf = compute_sdf(vol.voxels.astype(bool), vol.spacing_mm, cap_mm=20.0)
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(200, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    r = rng.uniform(0.0, 30.0, 200)
    pts = centre + dirs * r[:, None]
    got = sdf.sample_ijk(vol.lps_to_ijk_points(pts))
    expected = np.minimum(r - radius, 20.0)
    tol = 0.5 * float(np.linalg.norm(spacing)) + 0.1  # voxelised surface: half a diagonal
    assert np.abs(got - expected).max() < tol
    assert np.all(got[r < radius - max(spacing)] < 0)  # negative inside
    far = sdf.sample_ijk(vol.lps_to_ijk_points([[500.0, 500.0, 500.0]]))
    assert far[0] == 20.0  # beyond the box: "at least cap"


def test_coarse_sdf_is_conservative() -> None:
    centre = np.array([30.0, 45.0, 60.0])
    vol = _sphere_phantom((0.7, 0.7, 2.5), 12.0, centre)
    mask = vol.voxels.astype(bool)
    fine = compute_sdf(mask, vol.spacing_mm, cap_mm=20.0)
    coarse = compute_sdf(mask, vol.spacing_mm, cap_mm=20.0,
                         max_voxels=fine.distances_mm.size // 3)
    assert coarse.scale_ij == 2
    pts = centre + np.outer(np.linspace(13, 30, 30), [0.6, 0.8, 0.0])
    ijk = vol.lps_to_ijk_points(pts)
    f, c = fine.sample_ijk(ijk), coarse.sample_ijk(ijk)
    assert np.all(c <= f + 0.3)  # never claims more clearance than the fine field
    assert np.all(f - c < 2.0)  # at most a coarse in-plane diagonal (1.4 * sqrt 2)


def test_cylinder_structure_set_and_roi() -> None:
    spacing = (0.8, 0.8, 2.0)
    shape = (40, 100, 100)
    m = _grid(shape, spacing)
    k, j, i = np.indices(shape)
    vol = ImageVolume(np.zeros(shape, np.uint8), m)
    pts = vol.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    axis_xy = np.array([30.0, 45.0])
    cyl = np.linalg.norm(pts[:, :2] - axis_xy, axis=1) <= 6.0  # along S
    labels = ImageVolume((cyl * 52).reshape(shape).astype(np.uint8), m)
    cfg = StructureConfig(structures=(StructureSpec("aorta", ("aorta",), 5.0),),
                          derive_nerve_roots=False)
    ss = build_structures(labels, {52: "aorta"}, cfg, roi_center_lps=[30, 45, 60],
                          roi_half_size_mm=25.0, use_cache=False)
    probe = np.array([[30.0 + d, 45.0, 60.0] for d in (0.0, 3.0, 10.0, 20.0)])
    got = ss.sample(probe)[0]
    assert np.allclose(got, [-6.0, -3.0, 4.0, 14.0], atol=0.6)
    outside = ss.sample([[30.0, 45.0, 60.0 + 40.0]])  # beyond the ROI along S
    assert np.isnan(outside).all()


def test_unknown_label_name_is_an_error() -> None:
    labels = ImageVolume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    cfg = StructureConfig(structures=(StructureSpec("aorta", ("aortta",), 5.0),),
                          derive_nerve_roots=False)
    with pytest.raises(ValueError, match="none of its labels"):
        build_structures(labels, {52: "aorta"}, cfg, use_cache=False)


@pytest.mark.parametrize(
    ("data", "exc", "msg"),
    [
        ({"vertebra_margin": 1.0}, ValueError, r"structures\.vertebra_margin: unknown key"),
        ({"nerve_root_margin_mm": -2}, ValueError,
         r"structures\.nerve_root_margin_mm: expected a number in \[0, 50\] mm, got -2"),
        ({"clearance_cap_mm": "30"}, TypeError,
         r"structures\.clearance_cap_mm: expected a number in \(0, 200\] mm, got '30'"),
        ({"clearance_cap_mm": 6.0}, ValueError, "must exceed the largest margin"),
        ({"structures": [{"name": "x", "labels": ["aorta"], "margin": 3}]}, ValueError,
         r"structures\.structures\[0\]\.margin: unknown key"),
        ({"structures": [{"name": "x", "labels": "aorta", "margin_mm": 3}]}, TypeError,
         r"structures\.structures\[0\]\.labels: expected a non-empty list of"),
    ],
)
def test_structure_config_rejects_bad_input(data: dict, exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg):
        StructureConfig.from_dict(data)
