"""Training-time distractors: drawn into the picture, never over the needle, labels
consistent with what stays visible, deterministic for a seed, bad input refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from guidance.training.distractors import _bones, add_fluoro_distractors, add_us_distractors


def _frame(dtype: type = np.uint16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    img = rng.integers(20000, 40000, (128, 128)).astype(dtype)
    lab = np.zeros((128, 128), np.uint8)
    lab[10:118, 30:118] = 2  # vertebra
    cv2.line(lab, (0, 64), (60, 70), 1, 2)  # needle
    return img, lab


def test_fluoro_distractors_spare_the_needle_and_label_what_they_hide() -> None:
    img, lab = _frame()
    seen_shutter = seen_change = False
    for seed in range(40):
        out, olab = add_fluoro_distractors(img, lab, 0.5, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == img.shape
        needle = lab == 1
        # Only a bone adds to the needle (with one polarity); nothing covers it.
        d = out[needle] - img[needle].astype(np.float32)
        assert (d >= 0).all() or (d <= 0).all(), (
            f"seed {seed}: the needle both brightened and darkened "
            f"(change {d.min():.3g} to {d.max():.3g})")
        assert np.array_equal(olab == 1, needle)
        assert set(np.unique(olab)) <= {0, 1, 2}
        hidden = (lab == 2) & (olab == 0)  # vertebra under a shutter: background
        if hidden.sum() > 500:  # more than the penumbra
            seen_shutter = True
            # flat levels (one per shutter) and a thin penumbra, not the anatomy
            assert len(np.unique(out[hidden])) < 0.3 * len(np.unique(img[hidden]))
        seen_change |= not np.array_equal(out, img.astype(np.float32))
    assert seen_shutter and seen_change
    a = add_fluoro_distractors(img, lab, 0.5, np.random.default_rng(7))
    b = add_fluoro_distractors(img, lab, 0.5, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(img, _frame()[0])  # inputs are not modified


def test_us_distractors_keep_the_needle_label_and_never_black_it_out() -> None:
    img, lab = _frame(np.uint8)
    img[lab == 1] = 230
    for seed in range(20):
        out, olab = add_us_distractors(img, lab, 0.2, np.random.default_rng(seed))
        assert out.dtype == np.uint8
        assert np.array_equal(olab == 1, lab == 1)
        assert (out[lab == 1] >= 150).all()  # no sector mask across it (text may cross)


@pytest.mark.parametrize("fn", [add_fluoro_distractors, add_us_distractors])
def test_distractors_refuse_mismatched_input(fn) -> None:  # type: ignore[no-untyped-def]
    img, lab = _frame(np.uint8)
    with pytest.raises(ValueError, match="2D"):
        fn(img[None], lab, 0.2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        fn(img, lab[:10], 0.2, np.random.default_rng(0))


@pytest.mark.parametrize("bright_bone", [True, False])
def test_bones_are_tram_tracks_in_the_frames_bone_polarity(bright_bone: bool) -> None:
    img, lab = _frame()
    img = np.full(img.shape, 30000.0, np.float32)
    img[lab == 2] = 40000.0 if bright_bone else 20000.0
    seen = 0
    for seed in range(10):
        out = img.copy()
        _bones(out, lab, np.random.default_rng(seed), 1.0 / 0.5)
        d = out - img
        assert (d >= 0).all() if bright_bone else (d <= 0).all()
        seen += int((np.abs(d) > 100).sum() > 50)
    assert seen >= 8
    # A straight bone across an empty frame: cortical edges stand out more than its middle.
    flat = np.tile(np.linspace(25000.0, 35000.0, 128, dtype=np.float32), (128, 1))
    none = np.zeros((128, 128), np.uint8)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        out = flat.copy()
        _bones(out, none, rng, 1.0 / 0.2)  # 0.2 mm pixels: bones 15-100 px wide
        prof = np.abs(out - flat)
        if prof.max() <= 0:
            continue
        # Along any row crossing exactly one band, the profile has two peaks (the walls).
        for row in prof[::8]:
            on = np.flatnonzero(row > 0)
            if len(on) < 30 or on[-1] - on[0] + 1 != len(on):
                continue
            band = row[on[0]:on[-1] + 1]
            mid = band[len(band) // 2]
            assert band.max() > 1.05 * mid
            return
    pytest.fail("no single bone band crossed a row")


def test_held_out_fluoro_distractors_have_no_training_variety(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """variety=False (the held-out split) never draws bones, and its markers have no
    fonts or holders; it takes other draws from the generator than training does."""
    from guidance.training import distractors as d

    def no_bones(*args: object) -> None:
        raise AssertionError("bones drawn in a held-out frame")

    seen: list[bool] = []
    markers = d._lead_markers

    def spy(img, lab, rng, px_per_mm, variety=True):  # type: ignore[no-untyped-def]
        seen.append(variety)
        markers(img, lab, rng, px_per_mm, variety)

    flat = np.full((128, 128), 30000.0, np.float32)
    lab = np.zeros((128, 128), np.uint8)
    with monkeypatch.context() as m:
        m.setattr(d, "_bones", no_bones)
        m.setattr(d, "_lead_markers", spy)
        held = [np.random.default_rng(s) for s in range(30)]
        for r in held:
            d.add_fluoro_distractors(flat, lab, 0.5, r, variety=False)
    assert seen and not any(seen)
    train = [np.random.default_rng(s) for s in range(30)]
    for r in train:
        d.add_fluoro_distractors(flat, lab, 0.5, r)
    assert [r.random() for r in train] != [r.random() for r in held]
