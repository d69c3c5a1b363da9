"""A corpus of broken files, built here (never committed binaries), given to every command
that reads them: each is refused with exit status 2 and one line on stderr naming the
file and what is wrong, never a traceback and never a plan (issue 23, hostile input).

The good inputs are a small phantom (a 2 mm grid with a "spinal cord"): a DICOM CT series,
its label map as NIfTI and NRRD, label names, a structures config and a plan made from
them by ``guidance plan``; every broken file is one of these with one thing damaged.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from guidance.cli.main import main
from guidance.geometry import RAS_TO_LPS, ImageVolume
from guidance.io.dicom_write import write_dicom_series
from guidance.io.labels_io import write_nrrd

REPO = Path(__file__).resolve().parents[2]
CORD_XY = np.array([0.0, 20.0])  # LPS mm
STRUCTURES = {"structures": [{"name": "spinal_cord", "labels": ["spinal_cord"],
                              "margin_mm": 5.0}], "derive_nerve_roots": False}
TARGET = "0,0,0"
ENTRY = "30,-50,0"


def _phantom() -> tuple[ImageVolume, ImageVolume]:
    """(CT, labels) on a 2 mm grid, x, y in [-60, 58], z in [-20, 18] mm; label 1 = cord."""
    shape = (20, 60, 60)
    m = np.diag([2.0, 2.0, 2.0, 1.0])
    m[:3, 3] = [-60.0, -60.0, -20.0]
    k, j, i = np.indices(shape)
    grid = ImageVolume(np.zeros(shape, np.uint8), m)
    pts = grid.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    cord = (np.linalg.norm(pts[:, :2] - CORD_XY, axis=1) <= 6.0).reshape(shape)
    return ImageVolume(np.where(cord, 30, 40).astype(np.int16), m), ImageVolume(
        cord.astype(np.uint8), m)


def _write_nifti(voxels: np.ndarray, ijk_to_lps: np.ndarray, path: Path) -> None:
    affine = RAS_TO_LPS @ ijk_to_lps
    img = nib.Nifti1Image(np.transpose(voxels, (2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("good")
    ct, labels = _phantom()
    write_dicom_series(ct, root / "ct")
    _write_nifti(labels.voxels, labels.ijk_to_lps, root / "labels.nii.gz")
    write_nrrd(labels, root / "labels.nrrd")
    (root / "names.csv").write_text("id,structure\n1,spinal_cord\n")
    (root / "cfg.json").write_text(json.dumps({"structures": STRUCTURES}))
    ns = SimpleNamespace(root=root, ct=ct, labels=labels, ct_dir=root / "ct",
                         labels_nii=root / "labels.nii.gz", labels_nrrd=root / "labels.nrrd",
                         names=root / "names.csv", cfg=root / "cfg.json",
                         plan=root / "plan.json")
    assert main(_plan_argv(ns, out=ns.plan)) in (0, 1)
    assert ns.plan.is_file()
    return ns


def _plan_argv(g: SimpleNamespace, *, ct: Path | None = None, labels: Path | None = None,
               config: Path | None = None, out: Path | None = None) -> list[str]:
    return ["plan", "--ct", str(ct or g.ct_dir), "--labels", str(labels or g.labels_nii),
            "--label-names", str(g.names), "--target", TARGET, "--entry", ENTRY,
            "--config", str(config or g.cfg), "--out", str(out or g.root / "unused.json")]


def _verify_argv(g: SimpleNamespace, tmp: Path, *, plan: Path | None = None,
                 ct: Path | None = None, labels: Path | None = None) -> list[str]:
    return ["verify", "--plan", str(plan or g.plan), "--ct", str(ct or g.ct_dir),
            "--labels", str(labels or g.labels_nii), "--label-names", str(g.names),
            "--out", str(tmp / "verify-out")]


def _run_argv(*extra: str) -> list[str]:
    return ["run", "--listen", str(_free_port()), "--seconds", "0.1", *extra]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Run the CLI in-process: exit 2, one line on stderr naming ``words``, no traceback."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = one_refusal(err, argv[0])
    for w in words:
        assert w in lines, (w, lines)
    return lines


def one_refusal(err: str, command: str) -> str:
    """The one line of ``err`` that says why (progress lines on stderr aside: they end in
    a carriage return or a full bar, and come before it)."""
    parts = [p for p in re.split(r"[\r\n]", err) if p.strip()]
    said = [p for p in parts if "error:" in p]
    assert len(said) == 1, err
    assert said[0].startswith(f"guidance {command}: error: "), err
    assert parts[-1] == said[0], err  # nothing after it
    return said[0]


# -- the broken files ------------------------------------------------------------------------


def _dicom(g: SimpleNamespace, tmp: Path, name: str,
           mutate: Callable[[Any, int], None]) -> Path:
    """The good CT series with ``mutate(dataset, slice_index)`` applied to every file."""
    import pydicom

    folder = tmp / name
    write_dicom_series(g.ct, folder)
    for n, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        mutate(ds, n)
        ds.save_as(f)
    return folder


def _set(tag: str, value: object) -> Callable[[Any, int], None]:
    def mutate(ds: Any, _n: int) -> None:
        setattr(ds, tag, value)
    return mutate


def _truncate(ds: Any, n: int) -> None:
    if n == 3:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _float_nan(ds: Any, n: int) -> None:
    arr = np.full((ds.Rows, ds.Columns), 40.0, np.float32)
    if n == 5:
        arr[7, 9] = np.nan
    del ds.PixelData
    ds.FloatPixelData = arr.tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    for tag in ("RescaleSlope", "RescaleIntercept"):
        if tag in ds:
            delattr(ds, tag)


def _skew(ds: Any, _n: int) -> None:
    ds.ImageOrientationPatient = [1, 0, 0, 0.3, 0.95, 0]


def _off_line(ds: Any, n: int) -> None:
    if n == 4:
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0] + 9.0, ipp[1], ipp[2]]


BROKEN_CT: list[tuple[str, Callable[[Any, int], None], tuple[str, ...]]] = [
    ("pixel_spacing_0", _set("PixelSpacing", [0, 0]), ("PixelSpacing", "[0.0, 0.0]")),
    ("rescale_slope_nan", _set("RescaleSlope", "NaN"), ("RescaleSlope", "NaN")),
    ("rescale_slope_0", _set("RescaleSlope", 0), ("RescaleSlope", "got 0")),
    ("truncated_pixels", _truncate, ("PixelData has", "needs")),
    ("float_nan_voxels", _float_nan, ("not finite", "nan")),
    ("orientation_not_orthogonal", _skew, ("ImageOrientationPatient", "orthogonal")),
    ("slice_off_the_line", _off_line, ("off the line", "not one volume")),
]


@pytest.mark.parametrize(("name", "mutate", "words"), BROKEN_CT,
                         ids=[b[0] for b in BROKEN_CT])
def test_broken_dicom_ct_is_refused_by_plan_and_verify(
        good: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str, mutate: Callable[[Any, int], None], words: tuple[str, ...]) -> None:
    ct = _dicom(good, tmp_path, name, mutate)
    out = tmp_path / "plan.json"
    refused(_plan_argv(good, ct=ct, out=out), capsys, name, *words)
    assert not out.exists()  # never planned
    refused(_verify_argv(good, tmp_path, ct=ct), capsys, name, *words)


def test_nifti_ct_with_nan_voxels_is_never_planned(
        good: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vox = good.ct.voxels.astype(np.float32)
    vox[10, 30, 30] = np.nan
    ct = tmp_path / "nan_ct.nii.gz"
    _write_nifti(vox, good.ct.ijk_to_lps, ct)
    out = tmp_path / "plan.json"
    refused(_plan_argv(good, ct=ct, out=out), capsys, "nan_ct.nii.gz", "not finite")
    assert not out.exists()


def _nrrd_corrupt_gzip(g: SimpleNamespace, tmp: Path) -> Path:
    raw = g.labels_nrrd.read_bytes()
    end = raw.index(b"\n\n") + 2
    body = bytearray(raw[end:])
    body[10:40] = b"\xff" * 30  # inside the deflate stream
    p = tmp / "corrupt_gzip.nrrd"
    p.write_bytes(raw[:end] + bytes(body))
    return p


def _nrrd_missing_data_file(g: SimpleNamespace, tmp: Path) -> Path:
    raw = g.labels_nrrd.read_bytes()
    header = raw[: raw.index(b"\n\n")].decode()
    p = tmp / "detached.nhdr.nrrd"
    p.write_text(header + "\ndata file: labels.raw.gz\n\n")
    return p


def _nrrd_bad_sizes(g: SimpleNamespace, tmp: Path) -> Path:
    raw = g.labels_nrrd.read_bytes().replace(b"sizes: 60 60 20", b"sizes: 60 sixty 20")
    p = tmp / "bad_sizes.nrrd"
    p.write_bytes(raw)
    return p


def _nifti_non_integer(g: SimpleNamespace, tmp: Path) -> Path:
    p = tmp / "fractional.nii.gz"
    _write_nifti(g.labels.voxels.astype(np.float32) * 0.5, g.labels.ijk_to_lps, p)
    return p


def _nifti_elsewhere(g: SimpleNamespace, tmp: Path) -> Path:
    # (A label map on part of the CT's grid, or on another grid, is placed or resampled
    # onto it: tests/guidance/test_label_grid.py. One 5 m away covers none of it.)
    p = tmp / "elsewhere.nii.gz"
    m = g.labels.ijk_to_lps.copy()
    m[:3, 3] += [5000.0, 0.0, 0.0]
    _write_nifti(g.labels.voxels, m, p)
    return p


def _nifti_truncated(g: SimpleNamespace, tmp: Path) -> Path:
    p = tmp / "truncated.nii.gz"
    raw = gzip.decompress(g.labels_nii.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return p


BROKEN_LABELS: list[tuple[Callable[[SimpleNamespace, Path], Path], tuple[str, ...]]] = [
    (_nrrd_corrupt_gzip, ("corrupt_gzip.nrrd", "gzip data is corrupt")),
    (_nrrd_missing_data_file, ("detached.nhdr.nrrd", "labels.raw.gz")),
    (_nrrd_bad_sizes, ("bad_sizes.nrrd", "sizes")),
    (_nifti_non_integer, ("fractional.nii.gz", "non-integer")),
    (_nifti_elsewhere, ("elsewhere.nii.gz", "does not overlap")),
    (_nifti_truncated, ("truncated.nii.gz", "cannot read NIfTI")),
]


@pytest.mark.parametrize(("make", "words"), BROKEN_LABELS,
                         ids=[b[0].__name__.lstrip("_") for b in BROKEN_LABELS])
def test_broken_label_map_is_refused_by_plan_and_verify(
        good: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        make: Callable[[SimpleNamespace, Path], Path], words: tuple[str, ...]) -> None:
    labels = make(good, tmp_path)
    out = tmp_path / "plan.json"
    refused(_plan_argv(good, labels=labels, out=out), capsys, *words)
    assert not out.exists()
    refused(_verify_argv(good, tmp_path, labels=labels), capsys, *words)


# -- plan.json ------------------------------------------------------------------------------


def _plan_doc(g: SimpleNamespace) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(g.plan.read_text())
    return doc


def _mutated(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    def mutate(doc: dict[str, Any]) -> object:
        doc[key] = value
        return doc
    return mutate


BROKEN_PLANS: list[tuple[str, Callable[[dict[str, Any]], object], tuple[str, ...]]] = [
    ("negative_needle_length", _mutated("needle_length_mm", -89.0),
     ("needle_length_mm must be > 0", "-89")),
    ("booleans_as_coordinates", _mutated("entry_lps_mm", [True, False, True]),
     ("entry_lps_mm must be 3 finite numbers", "True")),
    ("target_5_m_outside", _mutated("target_lps_mm", [0.0, 0.0, 5000.0]),
     ("target_lps_mm", "outside the planning CT")),
    ("nan_coordinate", _mutated("target_lps_mm", [0.0, float("nan"), 0.0]),
     ("target_lps_mm[1]", "NaN is not a number JSON allows")),
    ("infinite_needle_length", _mutated("needle_length_mm", float("inf")),
     ("needle_length_mm", "Infinity")),
    ("entry_is_target", lambda d: {**d, "entry_lps_mm": d["target_lps_mm"]},
     (">= 1 mm apart",)),
    ("unknown_format", _mutated("format", "guidance.plan/9"), ("format", "guidance.plan/9")),
    ("not_an_object", lambda d: [d], ("must be a JSON object",)),
]


def _write_plan(g: SimpleNamespace, tmp: Path, name: str,
                mutate: Callable[[dict[str, Any]], object]) -> Path:
    p = tmp / f"{name}.json"
    p.write_text(json.dumps(mutate(_plan_doc(g))))  # NaN/Infinity as the JSON extension
    return p


@pytest.mark.parametrize(("name", "mutate", "words"), BROKEN_PLANS,
                         ids=[b[0] for b in BROKEN_PLANS])
def test_broken_plan_is_refused_by_run_and_verify(
        good: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str, mutate: Callable[[dict[str, Any]], object], words: tuple[str, ...]) -> None:
    plan = _write_plan(good, tmp_path, name, mutate)
    refused(_run_argv("--plan", str(plan)), capsys, f"{name}.json", *words)
    if name == "target_5_m_outside":  # verify names the scan it was given
        words = ("target_lps_mm", "outside the control CT")
    refused(_verify_argv(good, tmp_path, plan=plan), capsys, f"{name}.json", *words)
    assert not (tmp_path / "verify-out" / "verification.json").exists()


def test_plan_padded_to_50_mb_is_refused_unread(
        good: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "padded.json"
    with plan.open("w") as f:
        f.write(good.plan.read_text().rstrip()[:-1])
        f.write(' "padding": "' + " " * (50 * 1024 * 1024) + '"}')
    refused(_run_argv("--plan", str(plan)), capsys, "padded.json", "bytes is more than")
    refused(_verify_argv(good, tmp_path, plan=plan), capsys, "padded.json", "bytes is more")


def test_the_good_plan_still_loads(good: SimpleNamespace) -> None:
    from guidance.planning.plan import Plan
    from guidance.planning.provenance import load_plan_structures

    plan = Plan.load(good.plan)
    assert load_plan_structures(plan, good.plan).names == ("spinal_cord",)


# -- configurations and calibration files ---------------------------------------------------------


BROKEN_RUN_CONFIGS: list[tuple[str, str, tuple[str, ...]]] = [
    ("nan", '{"safety": {"caution_extra_mm": NaN}}', ("safety.caution_extra_mm", "NaN")),
    ("infinity", '{"ingest": {"stale_after_s": Infinity}}', ("stale_after_s", "Infinity")),
    ("bool_for_number", '{"safety": {"hysteresis_mm": true}}', ("hysteresis_mm", "True")),
    ("duplicate_key", '{"safety": {"hold_s": 0.3, "hold_s": 0}}', ("duplicate key", "hold_s")),
    ("not_json", "{safety", ("invalid JSON at line 1",)),
    ("not_utf8", '{"safety": {"x": "\xff"}}', ("not UTF-8",)),
]


@pytest.mark.parametrize(("name", "text", "words"), BROKEN_RUN_CONFIGS,
                         ids=[b[0] for b in BROKEN_RUN_CONFIGS])
def test_broken_run_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      name: str, text: str, words: tuple[str, ...]) -> None:
    cfg = tmp_path / f"{name}.json"
    cfg.write_bytes(text.encode("latin-1"))
    refused(_run_argv("--config", str(cfg)), capsys, f"{name}.json", *words)


BROKEN_PLAN_CONFIGS: list[tuple[str, str, tuple[str, ...]]] = [
    ("nan_margin", '{"structures": {"vertebra_margin_mm": NaN}}',
     ("vertebra_margin_mm", "NaN")),
    ("bool_margin", '{"trajectory": {"step_mm": true}}',
     ("trajectory.step_mm: expected a number", "got True")),
    ("negative_needle", '{"trajectory": {"needle_lengths_mm": [-50]}}',
     ("trajectory.needle_lengths_mm[0]: expected a number in (0, 500] mm, got -50",)),
]


@pytest.mark.parametrize(("name", "text", "words"), BROKEN_PLAN_CONFIGS,
                         ids=[b[0] for b in BROKEN_PLAN_CONFIGS])
def test_broken_plan_config_is_refused(
        good: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        name: str, text: str, words: tuple[str, ...]) -> None:
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(text)
    refused(_plan_argv(good, config=cfg), capsys, "--config", *words)


def _calibration(tmp: Path) -> dict[str, Any]:
    """A valid temporal calibration document (written by guidance calibrate)."""
    from guidance.io.calibration_file import Provenance, make_document

    prov = Provenance("2026-01-01T00:00:00+00:00", "0" * 64, "test", "guidance test", "test")
    return make_document("temporal", {"lag_s": 0.05, "peak_correlation": 0.9, "step_s": 0.01,
                                      "std_a": 1.0, "std_b": 1.0}, {}, prov)


BROKEN_CALIBRATIONS: list[tuple[str, Callable[[dict[str, Any]], str], tuple[str, ...]]] = [
    ("nan_lag", lambda d: json.dumps({**d, "lag_s": float("nan")}), ("lag_s", "NaN")),
    ("bool_lag", lambda d: json.dumps({**d, "lag_s": True}), ("lag_s", "must be a number")),
    ("bool_transform", lambda d: json.dumps(
        {**d, "transforms": {"ProbeToTracker": np.eye(4, dtype=bool).tolist()}}),
     ("transforms.ProbeToTracker", "true/false")),
    ("bool_version", lambda d: json.dumps({**d, "format_version": True}), ("format_version",)),
    ("padded", lambda d: json.dumps(d) + " " * (9 * 1024 * 1024), ("bytes is more than",)),
]


@pytest.mark.parametrize(("name", "write", "words"), BROKEN_CALIBRATIONS,
                         ids=[b[0] for b in BROKEN_CALIBRATIONS])
def test_broken_calibration_file_is_refused_by_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        write: Callable[[dict[str, Any]], str], words: tuple[str, ...]) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(write(_calibration(tmp_path)))
    refused(_run_argv("--calibration", str(path)), capsys, f"{name}.json", *words)


BROKEN_CALIBRATE_INPUTS: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("nan_points", b'{"moving_mm": [[0, 0, NaN], [1, 0, 0], [0, 1, 0]], '
                   b'"fixed_mm": [[0, 0, 0], [1, 0, 0], [0, 1, 0]]}', ("moving_mm[0][2]", "NaN")),
    ("bool_points", b'{"moving_mm": [[true, 0, 0], [1, 0, 0], [0, 1, 0]], '
                    b'"fixed_mm": [[0, 0, 0], [1, 0, 0], [0, 1, 0]]}', ("moving_mm", "true")),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00", ("not UTF-8",)),
]


@pytest.mark.parametrize(("name", "content", "words"), BROKEN_CALIBRATE_INPUTS,
                         ids=[b[0] for b in BROKEN_CALIBRATE_INPUTS])
def test_broken_calibrate_input_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes,
        words: tuple[str, ...]) -> None:
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    refused(["calibrate", "register", "--input", str(path)], capsys, f"{name}.json", *words)


# -- no traceback from a real process ------------------------------------------------------------


def _process(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guidance", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_real_process_prints_one_line_and_no_traceback(
        good: SimpleNamespace, tmp_path: Path) -> None:
    ct = _dicom(good, tmp_path, "spacing0", _set("PixelSpacing", [0, 0]))
    nrrd = _nrrd_corrupt_gzip(good, tmp_path)
    plan = _write_plan(good, tmp_path, "negative", _mutated("needle_length_mm", -1))
    for argv in (_plan_argv(good, ct=ct, out=tmp_path / "p.json"),
                 _plan_argv(good, labels=nrrd, out=tmp_path / "p.json"),
                 _run_argv("--plan", str(plan))):
        proc = _process(argv)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        one_refusal(proc.stderr, argv[0])
