"""Label maps (NIfTI or NRRD) to :class:`~guidance.geometry.ImageVolume`, and grid checks.

NRRD is read and written by a minimal implementation (no extra dependency): the
``raw`` and ``gzip`` encodings, 3D scalar data, ``space directions``/``space origin`` in
a ``left-posterior-superior`` or ``right-anterior-superior`` space (RAS is converted to
LPS here, once). This covers what 3D Slicer and TotalSegmentator write for segmentations.
"""

from __future__ import annotations

import csv
import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from guidance.geometry import RAS_TO_LPS, ImageVolume
from guidance.io.validate import InputError, check_label_volume

__all__ = [
    "LabelMapError",
    "check_same_grid",
    "is_dicom_file",
    "load_label_map",
    "load_labels_and_names",
    "read_dicom_seg",
    "read_label_names",
    "read_nrrd",
    "write_nrrd",
]

log = logging.getLogger(__name__)

_NRRD_TYPES: dict[str, str] = {
    "uchar": "u1", "unsigned char": "u1", "uint8": "u1", "uint8_t": "u1",
    "signed char": "i1", "int8": "i1", "int8_t": "i1", "char": "i1",
    "short": "i2", "int16": "i2", "int16_t": "i2", "signed short": "i2", "short int": "i2",
    "ushort": "u2", "unsigned short": "u2", "uint16": "u2", "uint16_t": "u2",
    "int": "i4", "int32": "i4", "int32_t": "i4", "signed int": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "float": "f4", "double": "f8",
}


class LabelMapError(InputError):
    """A label map that cannot be read or does not fit the CT; the message names the file."""


def _parse_vector(text: str, where: Path) -> npt.NDArray[np.float64]:
    text = text.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise LabelMapError(f"{where}: bad NRRD vector {text!r}")
    try:
        v = np.array([float(x) for x in text[1:-1].split(",")], dtype=np.float64)
    except ValueError:
        raise LabelMapError(f"{where}: bad NRRD vector {text!r}") from None
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise LabelMapError(f"{where}: NRRD vector must be 3 finite numbers, got {text!r}")
    return v


def read_nrrd(path: str | Path) -> ImageVolume:
    """Read a 3D scalar NRRD file (attached or detached data, raw or gzip).

    Returns:
        ImageVolume with ``voxels[k, j, i]`` and ``ijk_to_lps`` (LPS mm).

    Raises:
        LabelMapError: unsupported or malformed file, a missing or unreadable detached
            data file, corrupt gzip data; the message names the file.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise LabelMapError(f"{p}: cannot read: {e.strerror or e}") from None
    if not raw.startswith(b"NRRD000"):
        raise LabelMapError(f"{p}: not a NRRD file (no NRRD000x magic)")
    end = raw.find(b"\n\n")
    if end < 0:
        raise LabelMapError(f"{p}: NRRD header not terminated by an empty line")
    fields: dict[str, str] = {}
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise LabelMapError(f"{p}: malformed NRRD header line {line!r}")
        fields[key.strip().lower()] = value.strip()
    try:
        dtype = np.dtype(_NRRD_TYPES[fields["type"].lower()])
        dim = int(fields["dimension"])
        sizes = [int(v) for v in fields["sizes"].split()]
    except KeyError as e:
        raise LabelMapError(f"{p}: NRRD header lacks or has unsupported field {e}") from e
    except ValueError as e:
        raise LabelMapError(f"{p}: NRRD dimension/sizes must be integers ({e})") from None
    if dim != 3 or len(sizes) != 3 or min(sizes) < 1:
        raise LabelMapError(f"{p}: expected a 3D NRRD, got dimension {dim} sizes {sizes}")
    encoding = fields.get("encoding", "raw").lower()
    if fields.get("endian", "little").lower() == "big":
        dtype = dtype.newbyteorder(">")
    else:
        dtype = dtype.newbyteorder("<")
    if "data file" in fields or "datafile" in fields:
        data_path = p.parent / fields.get("data file", fields.get("datafile", ""))
        try:
            data = data_path.read_bytes()
        except OSError as e:
            raise LabelMapError(f"{p}: detached data file {data_path}: "
                                f"{e.strerror or e}") from None
    else:
        data = raw[end + 2:]
    if encoding in ("gzip", "gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise LabelMapError(f"{p}: NRRD gzip data is corrupt ({e})") from None
    elif encoding != "raw":
        raise LabelMapError(f"{p}: NRRD encoding {encoding!r} not supported (raw, gzip)")
    count = sizes[0] * sizes[1] * sizes[2]
    if len(data) < count * dtype.itemsize:
        raise LabelMapError(f"{p}: NRRD data truncated ({len(data)} bytes for {sizes} {dtype})")
    # NRRD's first axis is fastest: that is i, so the C-order array is [k, j, i].
    voxels = np.frombuffer(data[-count * dtype.itemsize:], dtype=dtype).reshape(sizes[::-1])
    space = fields.get("space", "left-posterior-superior").lower()
    m = np.eye(4)
    if "space directions" in fields:
        dirs = [d for d in fields["space directions"].split() if d.lower() != "none"]
        if len(dirs) != 3:
            raise LabelMapError(f"{p}: expected 3 space directions, got {dirs}")
        for a, d in enumerate(dirs):
            m[:3, a] = _parse_vector(d, p)
    elif "spacings" in fields:
        try:
            m[:3, :3] = np.diag([float(v) for v in fields["spacings"].split()])
        except ValueError:
            raise LabelMapError(f"{p}: NRRD spacings must be 3 numbers, got "
                                f"{fields['spacings']!r}") from None
    if "space origin" in fields:
        m[:3, 3] = _parse_vector(fields["space origin"], p)
    if space in ("right-anterior-superior", "ras"):
        m = RAS_TO_LPS @ m
    elif space not in ("left-posterior-superior", "lps"):
        raise LabelMapError(f"{p}: NRRD space {space!r} not supported (LPS or RAS)")
    try:
        return ImageVolume(np.ascontiguousarray(voxels.astype(dtype.newbyteorder("="))), m)
    except ValueError as e:
        raise LabelMapError(f"{p}: {e}") from e


def write_nrrd(volume: ImageVolume, path: str | Path, *, compress: bool = True) -> None:
    """Write a 3D ImageVolume as NRRD in LPS space (gzip encoding by default)."""
    v = volume.voxels
    if v.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {v.shape}")
    inverse = {"u1": "uint8", "i1": "int8", "i2": "int16", "u2": "uint16", "i4": "int32",
               "u4": "uint32", "f4": "float", "f8": "double"}
    code = v.dtype.str[1:]
    if code not in inverse:
        raise ValueError(f"dtype {v.dtype} not writable as NRRD")
    m = volume.ijk_to_lps
    dirs = " ".join("(" + ",".join(f"{x:.10g}" for x in m[:3, a]) + ")" for a in range(3))
    header = (
        "NRRD0004\n"
        f"type: {inverse[code]}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {v.shape[2]} {v.shape[1]} {v.shape[0]}\n"
        f"space directions: {dirs}\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        f"encoding: {'gzip' if compress else 'raw'}\n"
        "space origin: (" + ",".join(f"{x:.10g}" for x in m[:3, 3]) + ")\n\n"
    )
    body = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes()
    if compress:
        body = gzip.compress(body, compresslevel=1)
    Path(path).write_bytes(header.encode("ascii") + body)


def is_dicom_file(p: Path) -> bool:
    """A DICOM Part 10 file (the ``DICM`` magic after the 128-byte preamble)."""
    try:
        with p.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def seg_name(label: str) -> str:
    """A DICOM SEG's SegmentLabel as a structure name (``"Spinal cord"`` ->
    ``spinal_cord``; TotalSegmentator's names are kept as they are)."""
    return "_".join(label.strip().replace("-", " ").split()).lower() if " " in label.strip() \
        else label.strip()


def read_dicom_seg(path: str | Path) -> tuple[ImageVolume, dict[int, str]]:
    """A DICOM Segmentation (binary or fractional, e.g. TotalSegmentator's
    ``--output_type dicom`` or one from the PACS) as a label map: voxel = segment
    number (where segments overlap, the higher number), on the SEG's own grid.

    Returns:
        (label volume ``[k, j, i]`` with ``ijk_to_lps``, segment number -> name).

    Raises:
        LabelMapError: not a readable SEG, or segments on no common grid.
    """
    import highdicom as hd

    p = Path(path)
    try:
        seg = hd.seg.segread(p)
        vol = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as e:  # highdicom/pydicom raise many types for a bad object
        raise LabelMapError(f"{p}: cannot read as a DICOM Segmentation ({e})") from e
    if vol is None:
        raise LabelMapError(f"{p}: the SEG's frames do not form one regular volume")
    names = {int(item.SegmentNumber): seg_name(str(item.SegmentLabel))
             for item in seg.SegmentSequence}
    # highdicom's array axes (a0, a1, a2) map through its affine; ours are [k, j, i].
    m = np.asarray(vol.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    labels = ImageVolume(np.ascontiguousarray(np.asarray(vol.array)), m)
    return check_label_volume(labels, str(p), error=LabelMapError), names


def load_labels_and_names(path: str | Path) -> tuple[ImageVolume, dict[int, str] | None]:
    """A label map and, for a DICOM SEG, its segment names (``None`` otherwise: the
    names come from ``--label-names`` or the defaults)."""
    p = Path(path)
    if p.is_file() and (p.suffix.lower() == ".dcm" or is_dicom_file(p)):
        return read_dicom_seg(p)
    return load_label_map(p), None


def load_label_map(path: str | Path) -> ImageVolume:
    """Load an integer label map from NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``) or
    a DICOM SEG (see :func:`read_dicom_seg`; its names via :func:`load_labels_and_names`).

    Raises:
        LabelMapError: missing file, unknown extension, non-integer labels.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelMapError(f"{p}: no such label map file")
    if p.suffix.lower() == ".dcm" or is_dicom_file(p):
        return read_dicom_seg(p)[0]
    if p.name.endswith((".nii", ".nii.gz")):
        from guidance.io.nifti import NiftiError, load_nifti

        try:
            vol = load_nifti(p)
        except NiftiError as e:
            raise LabelMapError(str(e)) from e
    elif p.name.endswith((".nrrd", ".seg.nrrd")):
        vol = read_nrrd(p)
    else:
        raise LabelMapError(f"{p}: unknown label map format (expected .nii, .nii.gz, .nrrd or "
                            "a DICOM SEG)")
    return check_label_volume(vol, str(p), error=LabelMapError)


def read_label_names(path: str | Path) -> dict[int, str]:
    """Read a label-names CSV with the columns ``id,structure`` (TotalSegmentator's
    ``structures.csv`` layout).

    Returns:
        label id -> class name.

    Raises:
        LabelMapError: missing or unreadable file, a missing column, a non-integer id.
    """
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return {int(r["id"]): r["structure"] for r in rows}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise LabelMapError(f"{p}: expected a CSV with id,structure ({e})") from e


def check_same_grid(
    ct: ImageVolume, labels: ImageVolume, *, tol_mm: float = 1e-3, what: str = "label map"
) -> None:
    """Raise unless ``labels`` has the CT's voxel grid (shape and ``ijk_to_lps``).

    Args:
        tol_mm: largest allowed difference of any voxel corner position, mm.

    Raises:
        LabelMapError: naming both shapes or the largest geometric difference.
    """
    if ct.voxels.shape[:3] != labels.voxels.shape[:3]:
        raise LabelMapError(
            f"{what} is on another grid: shape {labels.voxels.shape[:3]} vs CT "
            f"{ct.voxels.shape[:3]} (resample it onto the CT first)"
        )
    k, j, i = ct.voxels.shape[:3]
    corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)])
    diff = np.abs(ct.ijk_to_lps_points(corners) - labels.ijk_to_lps_points(corners)).max()
    if diff > tol_mm:
        raise LabelMapError(
            f"{what} is on another grid: voxel positions differ from the CT by up to "
            f"{diff:.3f} mm (resample it onto the CT first)"
        )
