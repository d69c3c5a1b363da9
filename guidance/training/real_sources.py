"""Where the real needle-free images come from: the installed data packages' files.

The files of ``pydicom-data`` and ``deid-data`` (Python packages) and Debian's
``invesalius-examples``, per modality, with their licences; read only where installed,
nothing is downloaded. :mod:`guidance.training.realimages` decodes them (what each
modality takes and why is in its docstring).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PYDICOM_DATA_LICENCE = "MIT (pydicom-data; public DICOM test images)"
DEID_DATA_LICENCE = "MIT (deid-data, (c) 2016-2022 Vanessa Sochat)"
INVESALIUS_LICENCE = "GPL-2 (InVesalius; Debian invesalius-examples copyright)"

#: pydicom-data ultrasound: one encoding per distinct image. Left out as duplicates:
#: ``US1_UNCI/J2KR/J2KI``, ``examples_rgb_color``, ``examples_jpeg2k`` (= US1),
#: ``color-px`` (= color-pl), ``OBXXXX1A*`` other encodings and ``examples_palette``
#: (= OBXXXX1A_2frame), ``gdcm-US-ALOKA-16_big``, ``ExplVR_BigEnd`` (80x60 test image).
#: ``examples_ybr_color`` looks like a 320x240 re-encoding of the first 30 frames of
#: ``color3d_jpeg_baseline`` (kept: a different scale for the model).
_PYDICOM_US: tuple[str, ...] = (
    "color3d_jpeg_baseline.dcm",
    "examples_ybr_color.dcm",
    "US1_UNCR.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "color-pl.dcm",
    "OBXXXX1A_2frame.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
)
_PYDICOM_FLUORO: tuple[str, ...] = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")
_PYDICOM_CT: tuple[str, ...] = (
    "CT_small.dcm",
    "693_UNCR.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "bad_sequence.dcm",
    "explicit_VR-UN.dcm",
)
_DEID_MODALITIES: dict[str, tuple[str, ...]] = {
    "us": ("US",),
    "fluoro": ("CR", "DX", "XA", "RF"),
    "ct": (),  # deid-data's CT files are 8-bit colour captures, not HU
}
_INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
_INVESALIUS_STEP = 4


@dataclass(frozen=True)
class _Source:
    """A file to read: ``path`` (a DICOM file, or a zip holding ``member``)."""

    package: str
    label: str
    path: Path
    licence: str
    member: str | None = None



# -- finding the files ----------------------------------------------------------------


def _pydicom_file(name: str) -> Path | None:
    try:
        from pydicom.data import get_testdata_file

        p = get_testdata_file(name, download=False)
    except Exception as e:  # pydicom-data missing or broken
        log.warning("pydicom test file %s unavailable: %s", name, e)
        return None
    return Path(p) if p else None


def _deid_root() -> Path | None:
    try:
        import importlib.resources

        root = Path(str(importlib.resources.files("deid_data") / "data"))
    except ModuleNotFoundError:
        return None
    return root if root.is_dir() else None


def _header(src: _Source) -> Any:
    import pydicom

    if src.member is None:
        return pydicom.dcmread(str(src.path), stop_before_pixels=True)
    with zipfile.ZipFile(src.path) as zf, zf.open(src.member) as fh:
        return pydicom.dcmread(fh, stop_before_pixels=True)


def _deid_sources(modalities: Sequence[str]) -> list[_Source]:
    root = _deid_root()
    if root is None or not modalities:
        return []
    found: list[_Source] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        candidates: list[_Source] = []
        if path.suffix.lower() == ".dcm":
            candidates.append(_Source("deid-data", rel, path, DEID_DATA_LICENCE))
        elif path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    members = [m for m in zf.namelist() if m.lower().endswith(".dcm")]
            except (OSError, zipfile.BadZipFile) as e:
                log.warning("deid-data %s: cannot open zip: %s", rel, e)
                continue
            candidates += [
                _Source("deid-data", f"{rel}:{m}", path, DEID_DATA_LICENCE, m) for m in members
            ]
        for src in candidates:
            try:
                modality = str(getattr(_header(src), "Modality", ""))
            except Exception as e:
                log.warning("deid-data %s: cannot read header: %s", src.label, e)
                continue
            if modality in modalities:
                found.append(src)
    return found


def _sources(modality: str) -> list[_Source]:
    names = {"us": _PYDICOM_US, "fluoro": _PYDICOM_FLUORO, "ct": _PYDICOM_CT}[modality]
    out: list[_Source] = []
    for name in names:
        p = _pydicom_file(name)
        if p is None:
            log.warning("pydicom-data file %s not installed; skipped", name)
            continue
        out.append(_Source("pydicom-data", name, p, PYDICOM_DATA_LICENCE))
    out += _deid_sources(_DEID_MODALITIES[modality])
    if modality == "ct" and _INVESALIUS.is_file():
        out.append(_Source("invesalius-examples", _INVESALIUS.name, _INVESALIUS,
                           INVESALIUS_LICENCE))
    return out
