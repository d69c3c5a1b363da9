"""DICOM series loading: round trips from the real CT (axial, reversed, oblique,
compressed), uneven spacing, several series, bad input; NRRD/NIfTI label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.io.dicom_series import (
    DicomSeriesError,
    list_series,
    load_ct,
    load_dicom_series,
)
from guidance.io.dicom_write import write_dicom_series
from guidance.io.labels_io import LabelMapError, check_same_grid, load_label_map, write_nrrd
from tests.peers import require_module, require_real_ct

require_real_ct()  # skipped locally without it, a failure in CI


@pytest.fixture(scope="module")
def sub_ct() -> ImageVolume:
    """A 10 x 48 x 56 crop of the real CT around L1 (keeps the module fast)."""
    from guidance.data import load_real_ct

    ct = load_real_ct()
    k0, j0, i0 = 8, 170, 240
    vox = np.ascontiguousarray(ct.voxels[k0:k0 + 10, j0:j0 + 48, i0:i0 + 56])
    m = ct.ijk_to_lps.copy()
    m[:3, 3] = ct.ijk_to_lps_points([[i0, j0, k0]])[0]
    return ImageVolume(vox, m)


def _same_volume(a: ImageVolume, b: ImageVolume) -> None:
    """``b`` holds the same voxels at the same LPS positions as ``a`` (k may be flipped)."""
    m = np.linalg.inv(a.ijk_to_lps) @ b.ijk_to_lps  # b index -> a index
    assert np.allclose(m, np.round(m), atol=1e-4), m
    perm = np.round(m[:3, :3]).astype(int)
    assert np.array_equal(np.abs(perm), np.eye(3, dtype=int)), perm
    vb = b.voxels
    for axis, flip in enumerate(np.diag(perm)[::-1]):  # k, j, i
        if flip < 0:
            vb = np.flip(vb, axis=axis)
    assert np.array_equal(vb, a.voxels)


def _oblique(vol: ImageVolume, deg: float) -> ImageVolume:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # about L: gantry-like tilt
    m = vol.ijk_to_lps.copy()
    m[:3, :3] = rot @ m[:3, :3]
    return ImageVolume(vol.voxels, m)


def test_axial_round_trip(sub_ct: ImageVolume, tmp_path: Path) -> None:
    write_dicom_series(sub_ct, tmp_path)
    loaded = load_dicom_series(tmp_path)
    _same_volume(sub_ct, loaded.volume)
    assert loaded.volume.voxels.dtype == np.int16
    assert loaded.issues == ()
    assert np.all(np.diff(loaded.slice_positions_mm) > 0)


def test_order_is_by_position_not_by_name_or_instance_number(
    sub_ct: ImageVolume, tmp_path: Path
) -> None:
    n = sub_ct.voxels.shape[0]
    names = [f"img{(7 * k) % n:03d}.dcm" for k in range(n)]  # scrambled names
    write_dicom_series(sub_ct, tmp_path, file_names=names,
                       instance_numbers=list(range(n, 0, -1)))  # reversed numbers
    _same_volume(sub_ct, load_dicom_series(tmp_path).volume)


def test_reversed_slice_direction(sub_ct: ImageVolume, tmp_path: Path) -> None:
    m = sub_ct.ijk_to_lps.copy()
    k = sub_ct.voxels.shape[0]
    m[:3, 3] = m[:3, 3] + m[:3, 2] * (k - 1)
    m[:3, 2] = -m[:3, 2]
    rev = ImageVolume(np.ascontiguousarray(sub_ct.voxels[::-1]), m)
    write_dicom_series(rev, tmp_path)
    _same_volume(sub_ct, load_dicom_series(tmp_path).volume)


def test_oblique_orientation_round_trip(sub_ct: ImageVolume, tmp_path: Path) -> None:
    obl = _oblique(sub_ct, 17.0)
    write_dicom_series(obl, tmp_path)
    loaded = load_dicom_series(tmp_path).volume
    _same_volume(obl, loaded)
    # A voxel centre maps to the same LPS point through both geometries.
    assert np.allclose(loaded.ijk_to_lps_points([[3, 4, 0]]),
                       obl.ijk_to_lps_points([[3, 4, obl.voxels.shape[0] - 1]]), atol=1e-3)


def test_gantry_tilt_is_kept_as_shear(sub_ct: ImageVolume, tmp_path: Path) -> None:
    m = sub_ct.ijk_to_lps.copy()
    m[1, 2] = 0.6  # each slice shifted 0.6 mm along P: tilted gantry
    tilted = ImageVolume(sub_ct.voxels, m)
    write_dicom_series(tilted, tmp_path)
    loaded = load_dicom_series(tmp_path).volume
    _same_volume(tilted, loaded)


def test_rescale_slope_and_intercept(sub_ct: ImageVolume, tmp_path: Path) -> None:
    write_dicom_series(sub_ct, tmp_path, rescale_slope=2.0, rescale_intercept=-2048.0)
    vol = load_dicom_series(tmp_path).volume
    hu = np.flip(vol.voxels, 0).astype(np.int32)
    # Stored = round((HU + 2048) / 2): odd HU lose one unit, nothing more.
    assert np.abs(hu - sub_ct.voxels).max() <= 1
    assert np.abs(hu - sub_ct.voxels).max() == 1  # the slope really was applied


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])
def test_compressed_transfer_syntaxes(sub_ct: ImageVolume, tmp_path: Path, syntax: str) -> None:
    if syntax.endswith(".90"):
        require_module("openjpeg", "pylibjpeg-openjpeg (JPEG 2000; the 'data' extra)")
    small = ImageVolume(np.ascontiguousarray(sub_ct.voxels[:4]), sub_ct.ijk_to_lps)
    write_dicom_series(small, tmp_path, transfer_syntax=syntax)
    _same_volume(small, load_dicom_series(tmp_path).volume)


def test_missing_slice_is_detected_and_reported(sub_ct: ImageVolume, tmp_path: Path) -> None:
    write_dicom_series(sub_ct, tmp_path)
    files = sorted(tmp_path.glob("*.dcm"))
    files[4].unlink()
    with pytest.raises(DicomSeriesError, match=r"1 missing slice\(s\)"):
        load_dicom_series(tmp_path)
    loaded = load_dicom_series(tmp_path, allow_uneven=True)
    assert loaded.volume.voxels.shape[0] == sub_ct.voxels.shape[0]
    assert any("missing" in i for i in loaded.issues)
    assert any("resampled" in i for i in loaded.issues)
    # Interpolated slice lies between its neighbours.
    v = np.flip(loaded.volume.voxels, 0).astype(float)
    mid = 0.5 * (sub_ct.voxels[3].astype(float) + sub_ct.voxels[5])
    assert np.abs(v[4] - mid).max() <= 1.0


def test_several_series_require_a_choice(sub_ct: ImageVolume, tmp_path: Path) -> None:
    uid_a = write_dicom_series(sub_ct, tmp_path / "a", description="first")
    uid_b = write_dicom_series(
        ImageVolume(np.ascontiguousarray(sub_ct.voxels[:3]), sub_ct.ijk_to_lps),
        tmp_path / "b", description="second")
    with pytest.raises(DicomSeriesError, match="2 series") as e:
        load_dicom_series(tmp_path)
    assert uid_a in str(e.value) and uid_b in str(e.value)
    assert {s.series_uid for s in list_series(tmp_path)} == {uid_a, uid_b}
    assert load_dicom_series(tmp_path, uid_b).volume.voxels.shape[0] == 3
    with pytest.raises(DicomSeriesError, match="not found"):
        load_dicom_series(tmp_path, "1.2.3.4")


def test_one_ct_among_derived_objects_is_taken(sub_ct: ImageVolume, tmp_path: Path) -> None:
    """A study fetched from the PACS also holds our SEG (or SR, key images): the one CT
    series is loaded; two CT series still need a choice."""
    uid = write_dicom_series(sub_ct, tmp_path / "ct", description="control CT")
    write_dicom_series(ImageVolume(np.ascontiguousarray(sub_ct.voxels[:3]), sub_ct.ijk_to_lps),
                       tmp_path / "seg", modality="SEG", description="a derived series")
    got = load_dicom_series(tmp_path)
    assert got.series_uid == uid and got.volume.voxels.shape == sub_ct.voxels.shape
    write_dicom_series(sub_ct, tmp_path / "ct2", description="another CT")
    with pytest.raises(DicomSeriesError, match="3 series"):
        load_dicom_series(tmp_path)


def test_mixed_series_uid_with_duplicate_positions(sub_ct: ImageVolume, tmp_path: Path) -> None:
    write_dicom_series(sub_ct, tmp_path / "x", series_uid="1.2.826.0.1.99.1")
    write_dicom_series(sub_ct, tmp_path / "y", series_uid="1.2.826.0.1.99.1")
    with pytest.raises(DicomSeriesError, match="duplicate slice position"):
        load_dicom_series(tmp_path)


def test_empty_folder_and_non_dicom(tmp_path: Path) -> None:
    with pytest.raises(DicomSeriesError, match="empty folder"):
        load_dicom_series(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match="no DICOM image files"):
        load_dicom_series(tmp_path)
    with pytest.raises(DicomSeriesError, match="no such"):
        load_ct(tmp_path / "missing")


def test_non_ct_is_refused(sub_ct: ImageVolume, tmp_path: Path) -> None:
    write_dicom_series(sub_ct, tmp_path, modality="MR")
    with pytest.raises(DicomSeriesError, match="modality MR is not CT"):
        load_dicom_series(tmp_path)


def test_load_ct_dispatch_and_progress(sub_ct: ImageVolume, tmp_path: Path) -> None:
    write_dicom_series(sub_ct, tmp_path / "series")
    calls: list[float] = []
    vol = load_ct(tmp_path / "series", progress=lambda f, m: calls.append(f))
    _same_volume(sub_ct, vol)
    assert calls and calls[-1] == pytest.approx(1.0) and calls == sorted(calls)
    one = load_ct(sorted((tmp_path / "series").glob("*.dcm"))[0])
    assert one.voxels.shape[0] == 1
    from guidance.sim.control_ct import write_control_ct

    nii = write_control_ct(sub_ct, tmp_path / "ct.nii.gz")
    _same_volume(sub_ct, load_ct(nii))


def test_real_pydicom_ct_file() -> None:
    data = require_module("pydicom.data", "pydicom's test data")
    path = data.get_testdata_file("CT_small.dcm", download=False)  # type: ignore[attr-defined]
    assert path is not None, "pydicom's CT_small.dcm is part of pydicom itself"
    vol = load_ct(path)
    assert vol.voxels.shape == (1, 128, 128)
    assert np.allclose(vol.spacing_mm[:2], [0.661468, 0.661468], atol=1e-5)
    import pydicom

    ds = pydicom.dcmread(path)
    assert np.allclose(vol.ijk_to_lps[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(vol.voxels[0], expected)


def test_label_maps_nrrd_nifti_and_grid_check(sub_ct: ImageVolume, tmp_path: Path) -> None:
    labels = ImageVolume((sub_ct.voxels > 300).astype(np.uint8) * 31, sub_ct.ijk_to_lps)
    write_nrrd(labels, tmp_path / "l.nrrd")
    back = load_label_map(tmp_path / "l.nrrd")
    assert np.array_equal(back.voxels, labels.voxels)
    assert np.allclose(back.ijk_to_lps, labels.ijk_to_lps)
    check_same_grid(sub_ct, back)
    from guidance.sim.control_ct import write_control_ct

    write_control_ct(labels, tmp_path / "l.nii.gz")
    nii = load_label_map(tmp_path / "l.nii.gz")
    assert np.array_equal(nii.voxels, labels.voxels)
    moved = labels.ijk_to_lps.copy()
    moved[:3, 3] += 2.0
    shifted = ImageVolume(labels.voxels, moved)
    with pytest.raises(LabelMapError, match="another grid"):
        check_same_grid(sub_ct, shifted)
    with pytest.raises(LabelMapError, match="another grid"):
        check_same_grid(sub_ct, ImageVolume(labels.voxels[1:], labels.ijk_to_lps))
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: uchar\ndimension: 2\nsizes: 2 2\n\n1234")
    with pytest.raises(LabelMapError, match="expected a 3D NRRD"):
        load_label_map(tmp_path / "bad.nrrd")
    with pytest.raises(LabelMapError, match="unknown label map format"):
        (tmp_path / "x.png").write_bytes(b"x")
        load_label_map(tmp_path / "x.png")
