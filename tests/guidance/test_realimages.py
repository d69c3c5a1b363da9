"""Real needle-free images: counts per modality, decoding, display, broken files."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from guidance.training import real_sources, realimages
from guidance.training.realimages import RealFrame, describe_sources, needle_free_frames
from tests.peers import missing

#: Frames per multi-frame file in these tests (full US decoding takes ~5 s).
MAX_FRAMES = 30


def _need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        missing(f"{package} (the `data` extra)")


@pytest.fixture(autouse=True)
def _packages() -> None:
    _need("data_store")  # pydicom-data
    _need("deid_data")


def _check_frames(frames: list[RealFrame], dtype: type) -> None:
    for f in frames:
        assert isinstance(f, RealFrame)
        assert f.image.ndim == 2 and min(f.image.shape) >= 16, f.source
        assert f.image.dtype == dtype, f.source
        assert not f.image.flags.writeable
        assert f.licence.startswith(("MIT", "GPL")), f.source
        if not math.isnan(f.spacing_mm):  # NaN: the file gives no pixel spacing
            assert 0.01 < f.spacing_mm < 5.0, (f.source, f.spacing_mm)


def test_ultrasound_frames_from_both_packages() -> None:
    frames = needle_free_frames("us", MAX_FRAMES)
    assert len(frames) >= 140
    _check_frames(frames, np.uint8)
    sources = {f.source.split(" frame")[0] for f in frames}
    assert "pydicom-data:color3d_jpeg_baseline.dcm" in sources
    assert "deid-data:ultrasounds/RGB_CINE.zip:RGB_CINE.dcm" in sources
    assert all(s.startswith(("pydicom-data:", "deid-data:")) for s in sources)
    # Region crops carry the region's physical spacing (cm -> mm).
    cine = [f for f in frames if "color3d_jpeg_baseline" in f.source]
    assert len(cine) == MAX_FRAMES
    assert cine[0].image.shape == (414 - 31 + 1, 595 - 84 + 1)
    assert cine[0].spacing_mm == pytest.approx(0.5105, abs=1e-3)
    # The ALOKA dual view gives both B-mode halves, never its waveform region.
    assert sum("gdcm-US-ALOKA-16" in f.source for f in frames) == 2
    # Regions copied from a larger image are not trusted: whole frame, unknown spacing.
    ybr = [f for f in frames if "examples_ybr_color" in f.source]
    assert ybr and ybr[0].image.shape == (240, 320) and math.isnan(ybr[0].spacing_mm)
    report = describe_sources("us", MAX_FRAMES)
    assert sum(int(r["frames"]) for r in report) == len(frames)  # type: ignore[call-overload]
    assert all(r["error"] == "" for r in report)


def test_fluoro_radiographs_and_crops() -> None:
    frames = needle_free_frames("fluoro")
    _check_frames(frames, np.uint16)
    per_file = {r["file"]: r["frames"] for r in describe_sources("fluoro")}
    n_views = 1 + len(realimages.FLUORO_CROPS)
    assert per_file["pydicom-data:RG1_UNCR.dcm"] == n_views
    assert per_file["pydicom-data:RG3_UNCR.dcm"] == n_views
    assert per_file["deid-data:animals/cat.dcm"] == n_views  # a DX radiograph
    assert len(frames) == 3 * n_views
    crops = [f for f in frames if " crop " in f.source]
    assert len(crops) == 3 * len(realimages.FLUORO_CROPS)
    cat = [f for f in frames if "cat.dcm" in f.source]
    assert all(f.spacing_mm == pytest.approx(0.14) for f in cat)
    # 150-230 mm fields: 0.14 mm/px -> 1071-1643 px.
    assert {f.image.shape[0] for f in cat if " crop " in f.source} <= set(range(1000, 1700))


def test_monochrome1_chest_shows_bone_bright() -> None:
    chest = next(f for f in needle_free_frames("fluoro") if "RG1_UNCR" in f.source)
    assert "whole" in chest.source
    a = chest.image.astype(np.float64)
    h, w = a.shape
    spine = a[int(0.3 * h):int(0.6 * h), int(0.46 * w):int(0.54 * w)].mean()
    lungs = np.mean([a[int(0.3 * h):int(0.55 * h), int(0.2 * w):int(0.32 * w)].mean(),
                     a[int(0.3 * h):int(0.55 * h), int(0.68 * w):int(0.8 * w)].mean()])
    # MONOCHROME1 stored values are inverted: without the inversion the lungs
    # (high exposure) would be brighter than the mediastinum and spine.
    assert spine > lungs + 10000


def test_ct_slices_in_hu() -> None:
    frames = needle_free_frames("ct")
    _check_frames(frames, np.int16)
    names = {f.source.split(" ")[0] for f in frames}
    for n in ("CT_small.dcm", "693_UNCR.dcm", "J2K_pixelrep_mismatch.dcm"):
        assert f"pydicom-data:{n}" in names
    small = next(f for f in frames if "CT_small" in f.source)
    assert small.spacing_mm == pytest.approx(0.661468)
    for f in frames:
        assert f.image.min() >= -1024 and f.image.max() <= 3071
        # Real CT: air and soft tissue present (HU scale applied, not raw values).
        assert (f.image < -500).any(), f.source
        if "Cranium" not in f.source:
            assert np.median(f.image[f.image > -500]) < 200, f.source


def test_broken_file_is_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    from pydicom.data import get_testdata_file

    good = real_sources._Source(
        "pydicom-data", "CT_small.dcm", Path(get_testdata_file("CT_small.dcm", download=False)),
        real_sources.PYDICOM_DATA_LICENCE,
    )
    bad = real_sources._Source(
        "pydicom-data", "MR_truncated.dcm",
        Path(get_testdata_file("MR_truncated.dcm", download=False)),
        real_sources.PYDICOM_DATA_LICENCE,
    )
    missing = real_sources._Source("x", "nope.dcm", Path("/nonexistent/nope.dcm"), "none")
    with caplog.at_level(logging.WARNING, logger="guidance.training.realimages"):
        frames, reports = realimages._load("ct", [bad, good, missing], None)
    assert [f.source for f in frames] == ["pydicom-data:CT_small.dcm frame 0"]
    assert [r.frames for r in reports] == [0, 1, 0]
    assert reports[0].error and reports[2].error and not reports[1].error
    text = caplog.text
    assert "MR_truncated.dcm" in text and "nope.dcm" in text


@pytest.mark.parametrize(
    ("modality", "max_frames", "exc", "match"),
    [
        ("xyz", None, ValueError, "modality"),
        ("US", None, ValueError, "modality"),
        (3, None, TypeError, "modality"),
        ("us", 0, ValueError, "max_frames_per_file"),
        ("us", 2.0, TypeError, "max_frames_per_file"),
    ],
)
def test_bad_arguments(modality: object, max_frames: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        needle_free_frames(modality, max_frames)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        describe_sources(modality, max_frames)  # type: ignore[arg-type]


def test_contact_sheets(tmp_path: Path) -> None:
    for modality in realimages.MODALITIES:
        frames = needle_free_frames(modality, MAX_FRAMES if modality == "us" else None)
        tiles = []
        for f in frames[:: max(1, len(frames) // 16)][:16]:
            a = f.image.astype(np.float32)
            if modality == "ct":
                a = np.clip((a + 160.0) / 400.0, 0.0, 1.0) * 255.0
            elif modality == "fluoro":
                a = a / 257.0
            tiles.append(cv2.resize(a.astype(np.uint8), (128, 128)))
        sheet = np.hstack(tiles)
        out = tmp_path / f"real_{modality}.png"
        assert cv2.imwrite(str(out), sheet)
        assert out.stat().st_size > 1000
