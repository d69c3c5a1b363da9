"""Ultrasound hard negatives and the needle-free held-out set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guidance.training.distractors import add_us_hard_negatives
from guidance.training.needle_free import build_needle_free_set


@pytest.mark.parametrize("seed", range(6))
def test_hard_negatives_never_hide_the_needle_nor_relabel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(10, 80, (200, 160)).astype(np.uint8)
    img[:, :8] = 0  # outside the footprint: stays black
    lab = np.zeros_like(img)
    lab[100:103, 40:120] = 1
    img[lab == 1] = 230
    out, olab = add_us_hard_negatives(img, lab, 0.2, np.random.default_rng(seed))
    assert np.array_equal(olab, lab) and olab is not lab
    assert (out[lab == 1] >= 230).all()
    assert (out[:, :8] == 0).all()
    assert not np.array_equal(out, img)  # something was drawn
    again, _ = add_us_hard_negatives(img, lab, 0.2, np.random.default_rng(seed))
    assert np.array_equal(out, again)


def test_hard_negatives_refuse_a_wrong_image() -> None:
    with pytest.raises(ValueError, match="2D uint8"):
        add_us_hard_negatives(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), 0.2,
                              np.random.default_rng(0))


def test_needle_free_set_has_no_needle_and_is_reproducible(tmp_path: Path) -> None:
    ds = build_needle_free_set(8, 3, cache_dir=tmp_path)
    assert len(ds) == 8 and ds.split == "needle-free"
    assert not (ds.labels == 1).any()
    assert np.isnan(ds.tip_ij).all()
    assert (ds.labels >= 2).any()  # the anatomy is still labelled
    again = build_needle_free_set(8, 3)  # not from the cache
    assert np.array_equal(again.images, ds.images)
    with pytest.raises(ValueError, match="n_frames"):
        build_needle_free_set(0)
