"""Training-time distractors: drawn into the picture, never over the needle, labels
consistent with what stays visible, deterministic for a seed, bad input refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from guidance.training.distractors import add_fluoro_distractors, add_us_distractors


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
        assert np.array_equal(out[needle], img[needle].astype(np.float32))  # untouched
        assert np.array_equal(olab == 1, needle)
        assert set(np.unique(olab)) <= {0, 1, 2}
        hidden = (lab == 2) & (olab == 0)  # vertebra under a shutter: background
        if hidden.any():
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
