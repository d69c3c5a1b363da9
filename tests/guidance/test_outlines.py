"""The plan's structures projected into a fluoroscopy frame: a ball seen by a calibrated
camera is a circle of the right size where the projection puts it."""

from __future__ import annotations

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.pipeline.outlines import StructureOutlines
from guidance.pipeline.placement import FramePlacement
from guidance.planning.config import StructureConfig, StructureSpec
from guidance.planning.structures import build_structures


@pytest.fixture(scope="module")
def ball():
    """A 10 mm ball ("aorta") at (0, 0, 500) mm on a 1 mm grid."""
    shape = (40, 40, 40)
    m = np.eye(4)
    m[:3, 3] = [-20.0, -20.0, 480.0]
    grid = ImageVolume(np.zeros(shape, np.uint8), m)
    k, j, i = np.indices(shape)
    pts = grid.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    inside = (np.linalg.norm(pts - [0.0, 0.0, 500.0], axis=1) <= 10.0).reshape(shape)
    cfg = StructureConfig(structures=(StructureSpec("aorta", ("aorta",), 5.0),),
                          derive_nerve_roots=False)
    return build_structures(ImageVolume(inside.astype(np.uint8), m), {1: "aorta"}, cfg,
                            roi_center_lps=[0.0, 0.0, 500.0], roi_half_size_mm=15.0,
                            use_cache=False)


def test_a_ball_projects_to_a_circle_where_the_calibration_puts_it(ball) -> None:
    k = np.array([[1000.0, 0, 200.0], [0, 1000.0, 150.0], [0, 0, 1]])
    placement = FramePlacement("projection", ct_to_pixel=k @ np.eye(4)[:3])
    outlines = StructureOutlines(ball)
    assert outlines.names == ("aorta",)
    (o,) = outlines.project(placement, (400, 400))
    assert o.structure == "aorta" and len(o.polygons) == 1
    poly = o.polygons[0]
    centre = poly.mean(axis=0)
    assert np.linalg.norm(centre - [200.0, 150.0]) < 2.5
    radius = np.linalg.norm(poly - [200.0, 150.0], axis=1)
    assert 17.0 < radius.mean() < 25.0  # 10 mm at 500 mm with f = 1000 px: 20 px
    # Cached: the same projection gives the same objects, a moved one new outlines.
    assert outlines.project(placement, (400, 400))[0] is o
    moved = FramePlacement("projection", ct_to_pixel=k @ np.hstack([np.eye(3),
                                                                    [[30.0], [0], [0]]]))
    (o2,) = outlines.project(moved, (400, 400))
    assert o2.polygons[0].mean(axis=0)[0] == pytest.approx(centre[0] + 60.0, abs=2.5)
    # A slice has no projected outlines; a ball behind the source none either.
    assert outlines.project(FramePlacement("slice", np.eye(4)), (400, 400)) == ()
    behind = FramePlacement("projection", ct_to_pixel=k @ np.diag([1.0, 1.0, -1.0, 1.0])[:3])
    assert outlines.project(behind, (400, 400)) == ()
