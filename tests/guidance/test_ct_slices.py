"""Simulated CT slices with a needle: determinism, ground truth, ranges, argument checks."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from guidance.sim import ct_distractors
from guidance.sim.ct_distractors import room_air
from guidance.sim.ct_needle_render import PixelGrid
from guidance.sim.ct_slice_params import CtSliceParams
from guidance.sim.ct_slices import (
    CT_LABELS,
    CtSliceFrame,
    CtSliceGenerator,
    ct_slice_frames,
)
from tests.peers import require_real_ct

SIZE = 128
N = 40


@pytest.fixture(scope="module")
def frames() -> list[CtSliceFrame]:
    require_real_ct()
    return list(ct_slice_frames(N, SIZE, seed=3))


def test_frames_have_the_documented_types(frames: list[CtSliceFrame]) -> None:
    for f in frames:
        assert f.image.shape == (SIZE, SIZE) and f.image.dtype == np.int16
        assert f.image.min() >= -1024 and f.image.max() <= 3071
        assert f.truth.labels.shape == (SIZE, SIZE) and f.truth.labels.dtype == np.uint8
        assert f.truth.label_names == CT_LABELS
        assert 0.45 <= f.spacing_mm <= 0.9 and 1.0 <= f.thickness_mm <= 5.0
        assert f.volume.voxels.shape == (1, SIZE, SIZE)
        np.testing.assert_allclose(f.volume.spacing_mm[:2], f.spacing_mm)


def test_same_seed_same_frame(frames: list[CtSliceFrame]) -> None:
    gen = CtSliceGenerator(SIZE, seed=3)
    for k in (0, 7, N - 1):
        again = gen.frame(k)
        np.testing.assert_array_equal(again.image, frames[k].image)
        np.testing.assert_array_equal(again.truth.labels, frames[k].truth.labels)
        np.testing.assert_array_equal(again.truth.tip_ij, frames[k].truth.tip_ij)
    other = CtSliceGenerator(SIZE, seed=4).frame(0)
    assert not np.array_equal(other.image, frames[0].image)


def test_negatives_and_needles_are_mixed(frames: list[CtSliceFrame]) -> None:
    neg = [f for f in frames if not f.sample.has_needle]
    assert 0.05 * N <= len(neg) <= 0.4 * N
    for f in neg:
        assert not f.truth.labels.any()
        assert not f.truth.needle_in_view
        assert np.all(np.isnan(f.truth.tip_ij)) and np.all(np.isnan(f.truth.axis_ij))
    pos = [f for f in frames if f.sample.has_needle]
    assert sum(f.truth.labels.any() for f in pos) >= 0.8 * len(pos)


def test_tip_and_axis_agree_with_labels(frames: list[CtSliceFrame]) -> None:
    seen = 0
    for f in frames:
        t = f.truth
        if not t.needle_in_view:
            continue
        seen += 1
        i, j = np.rint(t.tip_ij).astype(int)
        window = t.labels[max(j - 1, 0):j + 2, max(i - 1, 0):i + 2]
        assert window.any(), f"frame {f.index}: tip {t.tip_ij} not on the needle label"
        assert np.isfinite(t.tip_lps).all() and abs(np.linalg.norm(t.axis_lps) - 1) < 1e-9
        # The tip's LPS position maps back onto its pixel through the frame geometry.
        ijk = f.volume.lps_to_ijk_points(t.tip_lps)[0]
        np.testing.assert_allclose(ijk[:2], t.tip_ij, atol=1e-6)
        assert abs(ijk[2]) <= 0.5 + 1e-9  # inside the slab (k in slice thicknesses)
        if np.isfinite(t.axis_ij).all():
            assert abs(np.linalg.norm(t.axis_ij) - 1) < 1e-9
            # Pixels a few mm behind the tip along -axis are needle too (in-plane case).
            if f.sample.tilt_out_of_plane_deg is not None and abs(
                f.sample.tilt_out_of_plane_deg
            ) < 2.0:
                back = t.tip_ij - 3.0 * t.axis_ij
                bi, bj = np.rint(back).astype(int)
                if 0 <= bi < SIZE and 0 <= bj < SIZE:
                    assert t.labels[max(bj - 1, 0):bj + 2, max(bi - 1, 0):bi + 2].any()
    torso = sum("head" not in f.sample.distractors for f in frames)  # heads have no needle
    assert seen >= 0.4 * torso


def test_needle_pixels_stand_out(frames: list[CtSliceFrame]) -> None:
    """Labelled needle pixels are brighter than a ring 2-3 px around them (a thin needle
    in a thick slice or in air is faint in absolute HU, never invisible)."""
    from scipy import ndimage

    checked = 0
    for f in frames:
        lab = f.truth.labels.astype(bool)
        if lab.sum() < 5:
            continue
        ring = ndimage.binary_dilation(lab, iterations=3) & ~ndimage.binary_dilation(lab)
        contrast = np.median(f.image[lab]) - np.median(f.image[ring])
        assert contrast > 150, f"frame {f.index}: needle contrast {contrast} HU"
        checked += 1
    assert checked >= 0.4 * N


def test_held_out_ranges_differ_from_training() -> None:
    tr, ho = CtSliceParams.training(), CtSliceParams.held_out()
    assert not set(tr.gauges) & set(ho.gauges)
    for a_lo, a_hi in tr.z_ranges_mm:
        for b_lo, b_hi in ho.z_ranges_mm:
            gap = max(b_lo - a_hi, a_lo - b_hi)
            assert gap >= 10.0, "training and held-out slices must not overlap"
    differing = [f.name for f in dataclasses.fields(CtSliceParams)
                 if getattr(tr, f.name) != getattr(ho, f.name)]
    assert {"z_ranges_mm", "gauges", "noise_hu", "spacing_mm"} <= set(differing)


def test_held_out_frames_use_held_out_ranges() -> None:
    require_real_ct()
    ho = CtSliceParams.held_out()
    gen = CtSliceGenerator(64, seed=11, params=ho)
    for k in range(6):
        f = gen.frame(k)
        assert f.sample.gauge in (0, *ho.gauges)
        z = float(f.sample.centre_lps[2])
        assert any(lo - 1e-6 <= z <= hi + 1e-6 for lo, hi in ho.z_ranges_mm)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"spacing_mm": (0.9, 0.4)}, ValueError, "spacing_mm"),
        ({"spacing_mm": 0.5}, TypeError, "spacing_mm"),
        ({"thickness_mm": (1.0, float("nan"))}, ValueError, "thickness_mm"),
        ({"gauges": (24,)}, ValueError, "gauges"),
        ({"gauges": ()}, TypeError, "gauges"),
        ({"noise_hu": (-1.0, 5.0)}, ValueError, "noise_hu"),
        ({"negative_fraction": 1.5}, ValueError, "negative_fraction"),
        ({"head_fraction": -0.1}, ValueError, "head_fraction"),
        ({"head_fraction": "0.1"}, TypeError, "head_fraction"),
        ({"tilt_deg": "5"}, TypeError, "tilt_deg"),
        ({"z_ranges_mm": ()}, TypeError, "z_ranges_mm"),
        ({"in_plane_fraction": 0.8, "end_on_fraction": 0.3}, ValueError, "end_on_fraction"),
    ],
)
def test_bad_params_name_the_parameter(kwargs: dict[str, object], exc: type, name: str) -> None:
    with pytest.raises(exc, match=name):
        CtSliceParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "exc", "name"),
    [
        ((0, 1), ValueError, "size"),
        ((64.0, 1), TypeError, "size"),
        ((64, -1), ValueError, "seed"),
        ((64, 1, "training"), TypeError, "params"),
    ],
)
def test_bad_generator_arguments(args: tuple[object, ...], exc: type, name: str) -> None:
    with pytest.raises(exc, match=name):
        CtSliceGenerator(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must"):
        ct_slice_frames(-1, 64, 0)


def _window(img: np.ndarray, level: float = 300.0, width: float = 2000.0) -> np.ndarray:
    return (np.clip((img.astype(np.float32) - (level - width / 2)) / width, 0, 1) * 255).astype(
        np.uint8
    )


def test_contact_sheet(frames: list[CtSliceFrame], tmp_path: Path) -> None:
    """W 2000 / L 300 images with the needle label outlined (yellow) and the tip (red)."""
    tiles = []
    for f in frames[:12]:
        a = cv2.cvtColor(_window(f.image), cv2.COLOR_GRAY2BGR)
        b = a.copy()
        contours, _ = cv2.findContours(f.truth.labels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(b, contours, -1, (0, 255, 255), 1)
        if f.truth.needle_in_view:
            cv2.circle(b, tuple(round(float(x)) for x in f.truth.tip_ij), 4, (0, 0, 255), 1)
        tiles.append(np.hstack([a, b]))
    sheet = np.vstack([np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)])
    out = tmp_path / "ct_slices.png"
    assert cv2.imwrite(str(out), sheet)
    assert out.stat().st_size > 1000
    assert math.isfinite(float(sheet.mean()))


def test_positioning_devices_are_drawn_in_room_air_only() -> None:
    img = np.full((64, 64), -1000.0, np.float32)  # room air
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 40) ** 2 + (xx - 32) ** 2 < 26 ** 2] = 40.0  # the body, cut by the border
    img[(yy - 50) ** 2 + (xx - 32) ** 2 < 10 ** 2] = -850.0  # a lung reaching the border
    img[30:33, 30:33] = -1000.0  # the trachea, inside
    air = room_air(img)
    assert air[2, 2] and air[5, 60]
    assert not air[50, 32] and not air[63, 32]  # lung, even where it meets the border
    assert not air[31, 31] and not air[40, 10]  # trachea, body
    assert not room_air(np.full((8, 8), 40.0, np.float32)).any()


def test_positioning_device_distractor_is_drawn_and_named(
        frames: list[CtSliceFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    original = ct_distractors.draw_shell
    changed_outside_air: list[int] = []

    def watched(grid: PixelGrid, img: np.ndarray, rng: np.random.Generator,
                air: np.ndarray, spacing: float) -> None:
        before = img.copy()
        original(grid, img, rng, air, spacing)
        changed = img != before
        assert changed.any()
        changed_outside_air.append(int((changed & ~room_air(before)).sum()))

    monkeypatch.setattr(ct_distractors, "draw_shell", watched)
    p = dataclasses.replace(CtSliceParams.training(), distractor_probability=1.0)
    fr = list(ct_slice_frames(12, SIZE, seed=5, params=p))  # some frames show no room air
    named = sum("positioning_device" in f.sample.distractors for f in fr)
    assert named == len(changed_outside_air) >= 2
    assert changed_outside_air == [0] * named


def test_head_slices_show_a_skull_and_never_a_needle() -> None:
    require_real_ct()
    assert CtSliceParams.held_out().head_fraction == 0
    p = dataclasses.replace(CtSliceParams.training(), head_fraction=1.0,
                            distractor_probability=0.0, spacing_mm=(0.8, 0.9))
    for f in ct_slice_frames(6, SIZE, seed=9, params=p):
        assert f.sample.distractors[0] == "head"
        assert not f.sample.has_needle and not f.truth.needle_in_view
        assert not (f.truth.labels == 1).any()
        img = ndimage.median_filter(f.image.astype(np.float32), 3)
        bone, air = img > 700, img < -900
        assert bone.mean() > 0.01, "a skull in every head slice"
        assert air.mean() > 0.005, "air around the head"
        # The brain is enclosed by the skull: a large soft-tissue region that never
        # touches the air (the scalp outside the skull does).
        soft, n = ndimage.label((img > 0) & (img < 90))
        near_air = np.unique(soft[ndimage.binary_dilation(air, iterations=2)])
        sizes = np.bincount(soft.ravel(), minlength=n + 1)
        enclosed = [k for k in range(1, n + 1) if k not in near_air and sizes[k] > 0.1 * img.size]
        assert enclosed, f"frame {f.index}: no brain enclosed by bone"
    # A fraction mixes head slices with the real CT; 0 draws none and changes nothing.
    mixed = dataclasses.replace(CtSliceParams.training(), head_fraction=0.15)
    heads = [f for f in ct_slice_frames(60, 64, seed=1, params=mixed)
             if "head" in f.sample.distractors]
    assert 1 <= len(heads) <= 20
    off = dataclasses.replace(CtSliceParams.training(), head_fraction=0.0)
    assert not any("head" in f.sample.distractors
                   for f in ct_slice_frames(20, 64, seed=1, params=off))
