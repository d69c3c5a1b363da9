"""The needle stage: tracker against image, in the image (fluoroscopy) and in the plane
(ultrasound), with both numbers when they disagree."""

from __future__ import annotations

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.pipeline.config import NavigationConfig
from guidance.pipeline.frame import Frame, NeedleEstimate2D3D, WorkItem
from guidance.pipeline.placement import FramePlacement
from guidance.pipeline.stages import NeedleStage

NAN3 = np.full(3, np.nan)


def _item(placement: FramePlacement, tip_ij, hub_ij) -> WorkItem:
    img = ImageVolume(np.zeros((1, 400, 400), np.uint16), np.diag([0.3, 0.3, 1.0, 1.0]))
    item = WorkItem(frame=Frame(1, "Image_Reference", img, 0.0, 0), t_s=0.0, at_s=10.0,
                    placement=placement)
    item.needle = NeedleEstimate2D3D(np.asarray(tip_ij, float), np.asarray(hub_ij, float),
                                     NAN3, NAN3, 0.9, "image")
    item.tracked = NeedleEstimate2D3D(np.full(2, np.nan), np.full(2, np.nan),
                                      np.array([0.0, 0.0, 500.0]), np.array([1.0, 0.0, 0.0]),
                                      1.0, "tracker")
    return item


@pytest.mark.parametrize(("offset_px", "degraded"), [(4.0, False), (14.0, True)])
def test_projection_compares_tips_in_mm_at_the_tips_depth(offset_px, degraded) -> None:
    # f = 1000 px at 500 mm: 2 px per mm at the tip (the detector's pixel size is
    # irrelevant: what counts is the magnification at the needle).
    k = np.array([[1000.0, 0, 200.0], [0, 1000.0, 200.0], [0, 0, 1]])
    placement = FramePlacement("projection", ct_to_pixel=k @ np.eye(4)[:3])
    item = _item(placement, (200.0 + offset_px, 200.0), (120.0 + offset_px, 200.0))
    NeedleStage(NavigationConfig(image_tracker_tip_mm=3.0)).process(item)
    assert item.metrics["tracker_image_tip_mm"] == pytest.approx(offset_px / 2.0, rel=1e-3)
    codes = [r.reason.code for r in item.reasons]
    assert ("tracker_image_disagree" in codes) is degraded
    if degraded:
        msg = item.reasons[codes.index("tracker_image_disagree")].message
        assert "7.0 mm apart (tolerance 3 mm)" in msg and "projects to (200, 200)" in msg
    # The tracked needle is the needle, whatever the image says.
    assert item.needle is not None and item.needle.source == "image+tracker"
    np.testing.assert_allclose(item.needle.tip_lps, [0.0, 0.0, 500.0])


def test_ultrasound_compares_only_when_the_tracked_tip_is_in_the_plane() -> None:
    # A slice in z = 0 (0.3 mm pixels); the tracked tip at (15, 15, dz).
    placement = FramePlacement("slice", np.diag([0.3, 0.3, 1.0, 1.0]))
    for dz, compared in ((1.0, True), (8.0, False)):
        item = _item(placement, (50.0, 50.0), (10.0, 50.0))
        item.tracked = NeedleEstimate2D3D(np.full(2, np.nan), np.full(2, np.nan),
                                          np.array([15.0, 15.0, dz]),
                                          np.array([1.0, 0.0, 0.0]), 1.0, "tracker")
        NeedleStage(NavigationConfig(image_plane_mm=3.0)).process(item)
        assert ("tracker_image_tip_mm" in item.metrics) is compared
        if compared:
            assert item.metrics["tracker_image_tip_mm"] == pytest.approx(1.0, abs=1e-6)
        else:
            assert item.metrics["tracked_tip_off_plane_mm"] == pytest.approx(8.0)
