"""The verification as DICOM objects in the control CT's study, with highdicom.

* :func:`measurement_report` -- Comprehensive 3D SR, "Imaging Measurement Report"
  (TID 1500): one measurement group (TID 1501) "Needle placement" with the tip-to-target
  distance, the lateral offset from the plan at target depth, the angle to the plan, the
  depth error, the needle length inside the body (UCUM mm, deg), the minimum clearance
  per critical structure along the final needle (each with its finding site), the
  verdict as a coded qualitative evaluation; the plan's target and trajectory and the
  detected tip and needle as SCOORD3D in the CT's frame of reference; this software
  and its version as the device observer.
* :func:`needle_segmentation` -- a binary SEG of the detected needle on the control
  CT's slices (same frame of reference, referencing its series).
* :func:`key_image_objects` -- the report's key images as Secondary Capture (RGB), with
  their orientation letters and scale bar burnt in and PatientOrientation set.

Codes: SNOMED CT and DCM from pydicom's code dictionary where a concept exists there;
the specific quantities of needle placement have none, so they use this project's
private coding scheme ``99GUIDANCE`` (DICOM PS3.16 8.2: private schemes start with 99),
with their meaning written out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.pacs.source import SourceSeries
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.planning.verify import VerificationResult

__all__ = [
    "MANUFACTURER",
    "SCHEME",
    "KeyImage",
    "from_report",
    "key_image_objects",
    "measurement_report",
    "needle_length_in_body_mm",
    "needle_mask",
    "needle_segmentation",
    "software_version",
    "structure_code",
    "write_verification_dicom",
]

log = logging.getLogger(__name__)

#: The private coding scheme of this project's concepts.
SCHEME = "99GUIDANCE"
MANUFACTURER = "guidance (research software, not a medical device)"
#: Series numbers of what we write (high, so they sort after the scanner's series).
SERIES_NUMBER = {"sr": 9901, "seg": 9902, "sc": 9903}
#: HU above which a voxel near the detected needle line is metal (as the detector).
NEEDLE_HU = 2000.0
#: Radius around the detected needle line searched for its voxels, mm.
NEEDLE_RADIUS_MM = 1.5


def software_version() -> str:
    """This package's version (``0.0.0`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("guidance")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0.0.0"


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value, SCHEME, meaning)


def _concepts() -> dict[str, Any]:
    from pydicom.sr.codedict import codes

    return {
        "tip_to_target": _code("TIP-TARGET", "Needle tip to target distance"),
        "lateral": _code("LATERAL-OFFSET",
                         "Lateral offset of the target from the needle axis"),
        "angle": _code("PLAN-ANGLE", "Angle between needle and planned trajectory"),
        "depth": _code("DEPTH-ERROR", "Tip depth beyond the target along the plan"),
        "inside": _code("LENGTH-IN-BODY", "Needle length inside the body"),
        "clearance": _code("MIN-CLEARANCE", "Minimum clearance from the needle"),
        "verdict": _code("VERDICT", "Needle placement verdict"),
        "procedure": _code("CT-NEEDLE-VERIFICATION",
                           "CT verification of a percutaneous needle placement"),
        "needle": codes.SCT.Needle,
        "mm": codes.UCUM.Millimeter,
        "deg": codes.UCUM.Degree,
    }


_VERDICTS = {"PASS": "Needle placement within tolerance, no structure breached",
             "OFF_TARGET": "Needle tip outside the target tolerance",
             "VIOLATION": "Needle breaches a critical structure or its margin"}

# Structure names -> pydicom code dictionary keywords where CamelCase does not find them.
_ALIASES = {"iliac_artery": "CommonIliacArtery", "iliac_vena": "CommonIliacVein",
            "clavicula": "Clavicle", "small_bowel": "SmallIntestine", "ribs": "Rib"}


def structure_code(name: str) -> tuple[Any, Any | None]:
    """(anatomic location code, laterality code or None) of a structure or target name:
    ``spinal_cord``, ``kidney_left``, ``vertebra_L1``, ``disc:L1-L2:left``,
    ``nerve_root_L1_left (derived)``.

    The SNOMED CT concept from pydicom's code dictionary when there is one (``L1
    vertebra``, ``L1/L2 disc``, ``Spinal cord``...), else a ``99GUIDANCE`` code whose
    meaning is the name (a derived nerve root has no SNOMED concept of its own level).
    """
    from pydicom.sr.codedict import codes

    text = name.replace(" (derived)", "").strip()
    laterality = None
    parts = [p for p in re.split(r"[:_]", text) if p]
    if parts and parts[-1] in ("left", "right"):
        laterality = codes.SCT.Left if parts[-1] == "left" else codes.SCT.Right
        parts = parts[:-1]
    base = "_".join(parts)
    key = _ALIASES.get(base)
    if key is None and len(parts) == 2 and parts[0] in ("vertebra", "vertebrae"):
        key = f"{parts[1]}Vertebra"
    elif key is None and len(parts) == 2 and parts[0] == "disc":
        key = parts[1].replace("-", "") + "Disc"
    elif key is None and parts[:2] != ["nerve", "root"]:
        key = "".join(p.capitalize() for p in parts)
    code = getattr(codes.SCT, key, None) if key else None
    if code is None:
        meaning = " ".join(parts) or "structure"
        if parts[:2] == ["nerve", "root"]:
            meaning = f"{' '.join(parts[2:])} nerve root (derived)".strip()
        code = _code(re.sub(r"[^A-Za-z0-9-]", "-", "-".join(parts)).upper()[:16] or "STRUCTURE",
                     meaning)
    return code, laterality


def needle_length_in_body_mm(ct: ImageVolume, result: VerificationResult,
                             body_hu: float = -400.0) -> tuple[float, npt.NDArray[np.float64]]:
    """Length of the needle inside the body (skin to tip) and the skin point (LPS mm).

    The skin is where, walking from the needle's outer end toward its tip, the tissue
    around the needle (4 points 4 mm off its axis, median) first exceeds ``body_hu``.
    When the outer end is already inside the body (the hub in the tissue or outside the
    scan), the length from the outer end is returned.
    """
    det = result.detection
    axis = det.axis_lps
    length = float((det.tip_lps - det.outer_lps) @ axis)
    s = np.arange(0.0, max(length, 0.0) + 0.5, 0.5)
    perp1 = np.cross(axis, [0.0, 0.0, 1.0])
    if np.linalg.norm(perp1) < 0.2:
        perp1 = np.cross(axis, [1.0, 0.0, 0.0])
    perp1 /= np.linalg.norm(perp1)
    perp2 = np.cross(axis, perp1)
    offsets = 4.0 * np.stack([perp1, -perp1, perp2, -perp2])
    pts = det.outer_lps + s[:, None] * axis
    samples = np.stack([_sample_hu(ct, pts + o) for o in offsets], axis=1)
    inside = np.median(samples, axis=1) > body_hu
    first = int(np.argmax(inside)) if inside.any() else len(s) - 1
    skin = det.outer_lps + s[first] * axis
    return float((det.tip_lps - skin) @ axis), skin


def _sample_hu(ct: ImageVolume, pts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    from scipy.ndimage import map_coordinates

    ijk = ct.lps_to_ijk_points(pts)
    vals: npt.NDArray[np.float64] = map_coordinates(
        ct.voxels.astype(np.float32), ijk[:, ::-1].T, order=1, mode="constant", cval=-1000.0)
    return vals


def needle_mask(ct: ImageVolume, result: VerificationResult) -> npt.NDArray[np.bool_]:
    """(K, J, I) bool: metal voxels (>= ``NEEDLE_HU``) within ``NEEDLE_RADIUS_MM`` of the
    detected needle, between its outer end and its tip (no voxel beyond the tip)."""
    det = result.detection
    shape = ct.voxels.shape
    ends = np.stack([det.outer_lps, det.tip_lps])
    ijk = ct.lps_to_ijk_points(ends)
    pad = NEEDLE_RADIUS_MM / float(np.min(ct.spacing_mm)) + 2
    lo = np.clip(np.floor(ijk.min(axis=0) - pad), 0, np.array(shape[::-1]) - 1).astype(int)
    hi = np.clip(np.ceil(ijk.max(axis=0) + pad), 0, np.array(shape[::-1]) - 1).astype(int)
    mask = np.zeros(shape, dtype=bool)
    kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2] + 1), np.arange(lo[1], hi[1] + 1),
                             np.arange(lo[0], hi[0] + 1), indexing="ij")
    grid = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    pts = ct.ijk_to_lps_points(grid)
    rel = pts - det.outer_lps
    along = rel @ det.axis_lps
    across = np.linalg.norm(rel - along[:, None] * det.axis_lps, axis=1)
    length = float((det.tip_lps - det.outer_lps) @ det.axis_lps)
    hu = ct.voxels[kk.ravel(), jj.ravel(), ii.ravel()]
    keep = (across <= NEEDLE_RADIUS_MM) & (along >= 0) & (along <= length) & (hu >= NEEDLE_HU)
    mask[kk.ravel()[keep], jj.ravel()[keep], ii.ravel()[keep]] = True
    return mask


def _device_observer(version: str) -> Any:
    from highdicom.sr import (
        DeviceObserverIdentifyingAttributes,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = DeviceObserverIdentifyingAttributes(
        # One UID per software version (derived, so the same version is the same device).
        uid=generate_uid(entropy_srcs=["guidance", version]),
        name=f"guidance {version}",
        manufacturer_name=MANUFACTURER,
        model_name="guidance needle placement verification",
    )
    return ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def measurement_report(source: SourceSeries, ct: ImageVolume, plan: Plan,
                       result: VerificationResult, structures: StructureSet | None = None,
                       *, cap_mm: float | None = None) -> Any:
    """The verification as a Comprehensive 3D SR (TID 1500) in the control CT's study.

    Args:
        source: the control CT's datasets (identity, frame of reference, evidence).
        ct: the control CT volume (for the needle length inside the body).
        plan: the plan (entry, target).
        result: the verification.
        structures: the plan's structures (the clearance cap); clearances at the cap are
            "at least that far", not measurements, and are left out.
        cap_mm: the cap when ``structures`` is not given.

    Returns:
        a ``highdicom.sr.Comprehensive3DSR`` (a pydicom Dataset).
    """
    import highdicom as hd
    from highdicom.sr import (
        CoordinatesForMeasurement3D,
        FindingSite,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        TrackingIdentifier,
    )
    from pydicom.uid import generate_uid

    c = _concepts()
    version = software_version()
    frame = source.frame_of_reference_uid
    det = result.detection
    cap = cap_mm if cap_mm is not None else (structures.cap_mm if structures else None)

    def point(p: npt.NDArray[np.float64]) -> Any:
        return CoordinatesForMeasurement3D("POINT", np.asarray(p, float).reshape(1, 3), frame)

    def line(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> Any:
        return CoordinatesForMeasurement3D("POLYLINE", np.stack([a, b]).astype(float), frame)

    inside_mm, skin = needle_length_in_body_mm(ct, result)
    measurements = [
        Measurement(c["tip_to_target"], round(result.tip_to_target_mm, 3), c["mm"],
                    referenced_coordinates=[point(det.tip_lps), point(plan.target_lps)]),
        Measurement(c["lateral"], round(result.lateral_offset_mm, 3), c["mm"]),
        Measurement(c["angle"], round(result.angle_error_deg, 3), c["deg"],
                    referenced_coordinates=[line(plan.entry_lps, plan.target_lps),
                                            line(det.outer_lps, det.tip_lps)]),
        Measurement(c["depth"], round(result.depth_error_mm, 3), c["mm"]),
        Measurement(c["inside"], round(inside_mm, 3), c["mm"],
                    referenced_coordinates=[line(skin, det.tip_lps)]),
    ]
    for cl in sorted(result.metrics.clearances, key=lambda cl: cl.min_mm):
        if not np.isfinite(cl.min_mm) or (cap is not None and cl.min_mm >= cap - 1e-6):
            continue
        code, side = structure_code(cl.structure)
        measurements.append(Measurement(
            c["clearance"], round(float(cl.min_mm), 3), c["mm"],
            finding_sites=[FindingSite(code, laterality=side)],
            referenced_coordinates=[point(cl.at_lps)]))
    target_code, target_side = structure_code(plan.target_spec or "target")
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(),
                                               identifier="Needle placement"),
        finding_type=c["needle"],
        finding_sites=[FindingSite(target_code, laterality=target_side)],
        measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(
            c["verdict"], _code(result.verdict, _VERDICTS.get(result.verdict,
                                                               result.verdict)))],
    )
    report = MeasurementReport(observation_context=_device_observer(version),
                               procedure_reported=c["procedure"],
                               imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(source.datasets), content=report,
        series_instance_uid=generate_uid(), series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, series_description="guidance needle verification",
    )
    sr.SoftwareVersions = version
    sr.CodingSchemeIdentificationSequence = [_scheme_identification()]
    return sr


def _scheme_identification() -> Any:
    """The private coding scheme declared in the object (PS3.3 C.12.1.1.9)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "guidance needle placement concepts"
    item.CodingSchemeResponsibleOrganization = "guidance project (research software)"
    return item


def needle_segmentation(source: SourceSeries, ct: ImageVolume,
                        result: VerificationResult) -> Any:
    """A binary DICOM SEG of the needle on the control CT's slices (highdicom)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    version = software_version()
    mask = needle_mask(ct, result)
    if not mask.any():
        raise ValueError("no needle voxel above the metal threshold near the detected line")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="guidance needle detection (bright-line RANSAC on HU)",
        family=codes.DCM.ImageProcessing,
        version=version)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Needle",
        segmented_property_category=codes.SCT.PhysicalObject,
        segmented_property_type=codes.SCT.Needle,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=generate_uid(), tracking_id="needle",
    )
    return hd.seg.Segmentation(
        source_images=list(source.datasets), pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["seg"], sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="guidance", software_versions=version,
        device_serial_number="0", series_description="guidance needle segmentation",
    )


@dataclass(frozen=True)
class KeyImage:
    """One key image: RGB pixels and where its axes point.

    Attributes:
        rgb: (H, W, 3) uint8, display orientation, letters and scale bar burnt in.
        u_lps: (3,) direction of increasing column; v_lps: of increasing row.
        pixel_mm: pixel size, mm (the image part; a legend panel may sit on its right).
        description: what it shows.
    """

    rgb: npt.NDArray[np.uint8]
    u_lps: npt.NDArray[np.float64]
    v_lps: npt.NDArray[np.float64]
    pixel_mm: float
    description: str


def from_report(images: Sequence[tuple[str, Any, npt.NDArray[np.uint8]]]) -> list[KeyImage]:
    """The report's key images (:func:`guidance.planning.report.key_images`: name, plane,
    RGB) as :class:`KeyImage` objects."""
    what = {"axial": "axial slice through the needle tip",
            "reformat": "oblique reformat along the needle"}
    return [KeyImage(rgb, spec.u_lps, spec.v_lps, spec.pixel_mm, what.get(name, name))
            for name, spec, rgb in images]


def _orientation_letters(d: npt.NDArray[np.float64]) -> str:
    """DICOM PatientOrientation letters of a direction (LPS: +x L, +y P, +z H), the
    dominant axis first, components under 0.25 left out (PS3.3 C.7.6.1.1.1)."""
    letters = []
    for axis in np.argsort(-np.abs(d)):
        if abs(d[axis]) < 0.25:
            continue
        plus, minus = "LPH"[axis], "RAF"[axis]
        letters.append(plus if d[axis] > 0 else minus)
    return "".join(letters) or "L"


def key_image_objects(source: SourceSeries, images: Sequence[KeyImage]) -> list[Any]:
    """Secondary Capture images (RGB) in the control CT's study, one series."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    series = generate_uid()
    out = []
    for n, img in enumerate(images, start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source.first, pixel_array=np.ascontiguousarray(img.rgb),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series, series_number=SERIES_NUMBER["sc"],
            sop_instance_uid=generate_uid(), instance_number=n, manufacturer=MANUFACTURER,
            patient_orientation=(_orientation_letters(img.u_lps),
                                 _orientation_letters(img.v_lps)),
            pixel_spacing=(img.pixel_mm, img.pixel_mm),  # type: ignore[arg-type]
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        if "BodyPartExamined" in source.first:  # copied, as the rest of the identity
            sc.BodyPartExamined = source.first.BodyPartExamined
        sc.SeriesDescription = "guidance verification key images"
        sc.ImageComments = img.description
        sc.SoftwareVersions = software_version()
        out.append(sc)
    return out


def write_verification_dicom(out_dir: str | Path, source: SourceSeries, ct: ImageVolume,
                             plan: Plan, result: VerificationResult,
                             structures: StructureSet | None,
                             images: Sequence[KeyImage]) -> list[Path]:
    """Write ``sr.dcm``, ``seg.dcm`` and ``key_<n>.dcm`` into ``out_dir`` (created).
    Returns the paths written. A needle with no voxel above the metal threshold gets no
    SEG (logged); everything else is always written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sr = measurement_report(source, ct, plan, result, structures)
    sr.save_as(out / "sr.dcm", enforce_file_format=True)
    written.append(out / "sr.dcm")
    try:
        seg = needle_segmentation(source, ct, result)
    except ValueError as e:
        log.warning("no SEG written: %s", e)
    else:
        seg.save_as(out / "seg.dcm", enforce_file_format=True)
        written.append(out / "seg.dcm")
    for n, sc in enumerate(key_image_objects(source, images), start=1):
        path = out / f"key_{n}.dcm"
        sc.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
