"""``guidance eval --images DIR --labels DIR``: a site's annotated DICOM images, the
needle-free list, the report's rates with their Wilson intervals, and bad layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from guidance.training.evaluate import rate_report, wilson_interval
from guidance.training.site_eval import NEEDLE_FREE_LIST, evaluate_site_images
from models.preprocess import GridSpec, ModelInput

SIZE = 128
SPACING_MM = 0.3


def _write_us(path: Path, frames: np.ndarray) -> None:
    """A minimal uncompressed 8-bit grey US DICOM file of (frames, rows, cols)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames.shape[0] > 1:
        ds.NumberOfFrames = frames.shape[0]
    ds.PixelData = np.ascontiguousarray(frames, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _frame(rng: np.random.Generator, line: tuple[int, int, int, int] | None) -> tuple[
        np.ndarray, np.ndarray]:
    """Speckle-like background, optionally a bright straight line; its label map."""
    img = rng.integers(20, 60, (SIZE, SIZE)).astype(np.uint8)
    lab = np.zeros((SIZE, SIZE), np.uint8)
    if line is not None:
        cv2.line(img, line[:2], line[2:], 255, 2)
        cv2.line(lab, line[:2], line[2:], 1, 2)
    return img, lab


class _Oracle:
    """A stand-in model: needle = the z-scored image above 3 (any bright line)."""

    def __init__(self) -> None:
        self.card = SimpleNamespace(modality="us", labels=("background", "needle", "nerve",
                                                           "vessel"),
                                    needle_rule={}, pixel_spacing_mm=SPACING_MM,
                                    name="oracle", version="0", onnx_sha256="0" * 64)
        self.backend = SimpleNamespace(name="oracle")
        self._inp = ModelInput(GridSpec("oracle", (SIZE, SIZE), {"method": "zscore"}))

    def segment(self, plane: np.ndarray, spacing_mm: float) -> Any:
        grid = self._inp(plane, spacing_mm)
        x = self._inp.tensor[0, 0].copy()
        p = (x > 3.0).astype(np.float32)
        probs = np.stack([1 - p, p, np.zeros_like(p), np.zeros_like(p)])
        return SimpleNamespace(probs=probs, grid=grid, labels=p.astype(np.uint8), image=x)


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """Five files: a labelled needle frame, a listed needle-free file with a bright
    straight fascia-like line (a false needle for the oracle), a listed clean file, a
    two-frame file with .npy labels (needle, then none), an unlabelled file and a
    broken one."""
    rng = np.random.default_rng(0)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    img, lab = _frame(rng, (20, 30, 100, 90))
    _write_us(images / "needle.dcm", img[None])
    cv2.imwrite(str(labels / "needle.png"), lab)
    img, _ = _frame(rng, (5, 60, 120, 64))
    _write_us(images / "fascia.dcm", img[None])
    img, _ = _frame(rng, None)
    _write_us(images / "clean.dcm", img[None])
    a, la = _frame(rng, (30, 20, 90, 100))
    b, lb = _frame(rng, None)
    _write_us(images / "cine.dcm", np.stack([a, b]))
    np.save(labels / "cine.npy", np.stack([la, lb]))
    img, _ = _frame(rng, (20, 30, 100, 90))
    _write_us(images / "other.dcm", img[None])
    (images / "broken.dcm").write_bytes(b"DICM not really")
    (labels / NEEDLE_FREE_LIST).write_text("# no needle in these\nfascia.dcm\nclean  # stem\n"
                                           "broken.dcm\n")
    return images, labels


def test_site_report_counts_rates_and_names_false_needles(site: tuple[Path, Path]) -> None:
    images, labels = site
    r = evaluate_site_images(_Oracle(), "us", images, labels)
    files = {f["file"]: f for f in r["files"]}
    assert files["other.dcm"]["labels"] == "unlabelled" and files["other.dcm"]["frames"] == 0
    assert files["broken.dcm"]["error"]
    assert files["needle.dcm"]["labels"] == "label map"
    assert files["fascia.dcm"]["labels"] == NEEDLE_FREE_LIST
    # Needle-free frames: fascia, clean, and cine frame 1 (its label map has no needle).
    free = r["needle_free"]
    assert free["frames"] == 3
    assert free["needle_reported"] == 1
    assert free["frames_with_false_needle"][0].startswith("fascia.dcm frame 0")
    assert free["rate"] == pytest.approx(1 / 3)
    assert free["rate_ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    assert r["targets"]["false_needle_rate"]["pass"] is False
    # Needle frames: needle.dcm and cine frame 0; the oracle finds both, tip within 1 mm.
    nd = r["needle"]
    assert nd["frames_with_needle"] == 2 and nd["detected"] == 2
    assert nd["detection_rate_ci95"] == pytest.approx(list(wilson_interval(2, 2)))
    assert nd["tip_error_mm"]["max"] < 1.0
    assert nd["angle_error_deg"]["max"] < 3.0
    assert r["frames_with_label_map"] == 3
    assert r["dice"]["needle"]["pooled"] > 0.6
    assert r["dice"]["nerve"]["frames_with_class"] == 0


def test_site_labels_of_another_shape_are_named(site: tuple[Path, Path]) -> None:
    images, labels = site
    cv2.imwrite(str(labels / "needle.png"), np.zeros((SIZE, SIZE + 2), np.uint8))
    r = evaluate_site_images(_Oracle(), "us", images, labels)
    bad = next(f for f in r["files"] if f["file"] == "needle.dcm")
    assert "needle.png" in bad["error"] and "differs" in bad["error"]


def test_site_without_any_labelled_frame_is_refused(tmp_path: Path) -> None:
    images, labels = tmp_path / "i", tmp_path / "l"
    images.mkdir()
    labels.mkdir()
    _write_us(images / "x.dcm", _frame(np.random.default_rng(1), None)[0][None])
    with pytest.raises(ValueError, match="no labelled frame"):
        evaluate_site_images(_Oracle(), "us", images, labels)
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_site_images(_Oracle(), "us", tmp_path / "absent", labels)


@pytest.mark.parametrize(("k", "n"), [(0, 400), (8, 400), (3, 267), (1, 15), (15, 15)])
def test_rate_report_carries_the_wilson_interval(k: int, n: int) -> None:
    r = rate_report(k, n)
    assert r["count"] == k and r["of"] == n and r["rate"] == pytest.approx(k / n)
    lo, hi = r["ci95"]
    assert lo <= k / n <= hi
    assert (lo, hi) == wilson_interval(k, n)


def test_wilson_upper_bound_of_none_in_400_is_below_one_percent() -> None:
    # What the needle-free set's size buys: 0 of 400 bounds the rate below 0.95 %,
    # 8 of 400 (2 %) still reaches 3.9 %.
    assert wilson_interval(0, 400)[1] == pytest.approx(0.00951, abs=1e-4)
    assert wilson_interval(8, 400)[1] == pytest.approx(0.0390, abs=5e-4)


def test_rate_report_of_no_trials() -> None:
    r = rate_report(0, 0)
    assert r["of"] == 0 and math.isnan(r["rate"]) and r["ci95"] is None


def test_cli_images_mode_writes_the_report(site: tuple[Path, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from guidance.cli.main import main
    from guidance.workflows import evaluate as cli_eval

    monkeypatch.setattr(cli_eval, "_segmenter", lambda card, modality, backends: _Oracle())
    images, labels = site
    out = tmp_path / "site.json"
    assert main(["eval", "--modality", "us", "--images", str(images), "--labels", str(labels),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["needle_free"]["needle_reported"] == 1
    assert report["targets"]["false_needle_rate"]["ci95"] == report["needle_free"]["rate_ci95"]
    err = capsys.readouterr().err
    assert "false needle: fascia.dcm frame 0" in err
    assert "not used: other.dcm: unlabelled" in err
    assert main(["eval", "--modality", "us", "--images", str(images)]) == 2
    assert "--images and --labels go together" in capsys.readouterr().err
