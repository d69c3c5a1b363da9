"""The room's calibrations: every ``--calibration FILE`` as static edges of the transform
graph and the uncertainties they declare.

Each calibration file (``guidance calibrate ...``, format in ``calibration/FORMATS.md``)
contributes:

- ``pivot``: ``<Tool>TipTo<Tool>`` with the pivot RMS as its calibration uncertainty;
- ``spin`` (with a tip offset): the same tip frame with the measured shaft as +z; it
  replaces a pivot file's tip frame of the same tool (their tips must agree);
- ``register``: ``<Moving>To<Fixed>`` (e.g. ``ReferenceToCT``) with the expected target
  registration error, computed at the point asked for (the plan's target) from the
  fiducials (Fitzpatrick, West and Maurer 1998, eq. 46);
- ``probe``: ``ImageToProbe`` with the calibration RMS;
- ``temporal``: the lag of the image stream behind the tracker (``a`` = tracker, ``b`` =
  image when it was measured): a frame stamped ``t`` shows the room at ``t - lag``;
- ``carm``: the C-arm's pose transform and its intrinsics ``K`` (pixels per camera-frame
  ray), so that the planning CT projects onto fluoroscopy frames through the graph.

Refusals (:class:`RoomSetupError`, naming the file): two files giving the same transform,
two temporal or C-arm files, a spin file without a tip frame, a registration still named
with the default ``MovingToFixed``, a lag beyond one second.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from calibration.registration import expected_tre
from guidance.io.calibration_file import CalibrationFile, CalibrationFileError, load_calibration
from trackers.transform_graph import TransformGraph, parse_transform_name

__all__ = ["CArmIntrinsics", "EdgeUncertainty", "RoomSetup", "RoomSetupError", "load_room",
           "room_setup", "static_room"]

F64 = npt.NDArray[np.float64]

#: Largest accepted temporal calibration lag, s.
MAX_LAG_S = 1.0
#: Pivot and spin tips of one tool farther apart than this are refused, mm.
MAX_TIP_DISAGREEMENT_MM = 1.0


class RoomSetupError(CalibrationFileError):
    """Calibration files that cannot be used together; the message names the files."""


@dataclass(frozen=True, eq=False)
class EdgeUncertainty:
    """The uncertainty a calibration file declares for the transform it gives.

    Attributes:
        edge: the ``FromToTo`` transform name.
        kind: ``calibration`` (a tool tip or a probe: RMS, mm) or ``registration``
            (expected TRE, mm, depends on where).
        sigma_mm: calibration: the RMS; registration: the expected TRE at the fiducials'
            centroid (or the largest listed target's TRE for files without fiducials).
        source: the file.
        fiducials_mm: registration: (N, 3) fiducials in the fixed frame, or ``None``.
        fle_mm: registration: RMS fiducial localisation error used, mm.
        targets_mm, target_tre_mm: registration: the file's own targets and TREs.
        pixel_spacing_mm: probe calibration: the (2,) image pixel spacing it was made
            with, mm (frames with another spacing do not fit it), else ``None``.
    """

    edge: str
    kind: str
    sigma_mm: float
    source: str
    fiducials_mm: F64 | None = None
    fle_mm: float = math.nan
    targets_mm: F64 = field(default_factory=lambda: np.zeros((0, 3)))
    target_tre_mm: F64 = field(default_factory=lambda: np.zeros(0))
    pixel_spacing_mm: F64 | None = None

    def at(self, point_fixed_mm: F64 | None) -> tuple[float, str]:
        """(uncertainty mm, how it was found) at a point of the fixed frame (for a
        registration; a calibration's RMS does not depend on where)."""
        name = os.path.basename(self.source)
        if self.kind != "registration":
            return self.sigma_mm, f"{self.edge} RMS {self.sigma_mm:.2f} mm ({name})"
        if point_fixed_mm is not None and self.fiducials_mm is not None:
            tre = float(expected_tre(self.fiducials_mm, point_fixed_mm[None], self.fle_mm)[0])
            return tre, f"{self.edge} expected TRE {tre:.2f} mm at the target ({name})"
        return self.sigma_mm, (f"{self.edge} expected TRE {self.sigma_mm:.2f} mm at the file's "
                               f"targets, not at this point ({name} has no fiducials_mm: "
                               "re-run calibrate register)")


@dataclass(frozen=True, eq=False)
class CArmIntrinsics:
    """A C-arm calibration: projection into its camera frame.

    Attributes:
        camera_frame: the frame of ``K`` (the ``to`` frame of the file's transform;
            origin at the X-ray source, z towards the detector).
        intrinsics: (3, 3) ``K``: pixel ``(u, v, 1) ~ K X_camera``.
        reprojection_rms_px: the calibration's RMS reprojection error, pixels.
        source: the file.
    """

    camera_frame: str
    intrinsics: F64
    reprojection_rms_px: float
    source: str


@dataclass(frozen=True, eq=False)
class RoomSetup:
    """Everything the calibration files say about the room.

    Attributes:
        static: transform name -> ((4, 4) matrix, source file).
        uncertainties: transform name -> :class:`EdgeUncertainty`.
        lag_s: how much later the image stream shows an event than the tracker, s (0
            without a temporal calibration).
        lag_source: the temporal calibration file (``""`` without).
        carm: the C-arm calibration, or ``None``.
        files: the files read, in order.
    """

    static: Mapping[str, tuple[F64, str]] = field(
        default_factory=lambda: MappingProxyType({}))
    uncertainties: Mapping[str, EdgeUncertainty] = field(
        default_factory=lambda: MappingProxyType({}))
    lag_s: float = 0.0
    lag_source: str = ""
    carm: CArmIntrinsics | None = None
    files: tuple[str, ...] = ()

    def apply_to(self, graph: TransformGraph) -> None:
        """Add every static transform to ``graph`` (with its source file)."""
        for name, (matrix, source) in self.static.items():
            graph.set_static(name, matrix, source=source)

    def describe(self) -> list[str]:
        """One line per transform and figure, for the console at start."""
        lines = []
        for name, (_, source) in self.static.items():
            unc = self.uncertainties.get(name)
            extra = ""
            if unc is not None:
                what = "RMS" if unc.kind == "calibration" else "expected TRE"
                extra = f", {what} {unc.sigma_mm:.2f} mm"
            lines.append(f"{name} from {source}{extra}")
        if self.lag_source:
            lines.append(f"image lag {self.lag_s * 1e3:.0f} ms behind the tracker from "
                         f"{self.lag_source}")
        if self.carm is not None:
            lines.append(f"C-arm intrinsics for frame {self.carm.camera_frame} from "
                         f"{self.carm.source} (RMS {self.carm.reprojection_rms_px:.2f} px)")
        return lines


def _tool_of_tip_frame(name: str) -> str | None:
    src, dst = parse_transform_name(name)
    return dst if src == f"{dst}Tip" else None


def room_setup(files: Sequence[CalibrationFile]) -> RoomSetup:
    """Combine loaded calibration files (see the module docstring).

    Raises:
        RoomSetupError: files that contradict each other or cannot be used (naming them).
    """
    static: dict[str, tuple[F64, str]] = {}
    unc: dict[str, EdgeUncertainty] = {}
    lag_s, lag_source = 0.0, ""
    carm: CArmIntrinsics | None = None
    spins: list[CalibrationFile] = []
    for f in files:
        if f.kind == "spin":
            if not f.transforms:
                raise RoomSetupError(
                    f"{f.source}: a spin calibration without a tip offset holds no transform: "
                    "re-run `guidance calibrate spin --pivot PIVOT.json --tool Needle ...`")
            spins.append(f)
            continue
        if f.kind == "temporal":
            if lag_source:
                raise RoomSetupError(f"{f.source}: a second temporal calibration (the first "
                                     f"is {lag_source})")
            lag = float(f.values["lag_s"])
            if abs(lag) > MAX_LAG_S:
                raise RoomSetupError(f"{f.source}: lag {lag:.3f} s is beyond +-{MAX_LAG_S} s")
            lag_s, lag_source = lag, f.source
            continue
        for name, matrix in f.transforms.items():
            src, dst = parse_transform_name(name)
            if {src, dst} & {"Moving", "Fixed"}:
                raise RoomSetupError(
                    f"{f.source}: transform {name} joins the placeholder frames of "
                    "`calibrate register` without --name: re-run it with --name ReferenceToCT "
                    "(the patient reference to the planning CT)")
            if name in static:
                raise RoomSetupError(f"{f.source}: {name} is given by {static[name][1]} too")
            static[name] = (np.array(matrix), f.source)
            if f.kind == "pivot":
                unc[name] = EdgeUncertainty(name, "calibration", float(f.values["rms_mm"]),
                                            f.source)
            elif f.kind == "probe":
                unc[name] = EdgeUncertainty(
                    name, "calibration", float(f.values["rms_mm"]), f.source,
                    pixel_spacing_mm=np.asarray(f.values["pixel_spacing_mm"], np.float64))
            elif f.kind == "register":
                unc[name] = _registration_uncertainty(name, f)
            elif f.kind == "carm":
                if carm is not None:
                    raise RoomSetupError(f"{f.source}: a second C-arm calibration (the first "
                                         f"is {carm.source})")
                carm = CArmIntrinsics(dst, np.array(f.values["intrinsics"]),
                                      float(f.values["reprojection_rms_px"]), f.source)
    for f in spins:
        for name, matrix in f.transforms.items():
            _merge_spin(name, np.array(matrix), f, static, unc)
    return RoomSetup(MappingProxyType(static), MappingProxyType(unc), lag_s, lag_source, carm,
                     tuple(f.source for f in files))


def _registration_uncertainty(name: str, f: CalibrationFile) -> EdgeUncertainty:
    tre = np.asarray(f.values["expected_tre_mm"], dtype=np.float64)
    targets = np.asarray(f.values["targets_mm"], dtype=np.float64).reshape(-1, 3)
    fid = f.values.get("fiducials_mm")
    fle = float(f.values["fle_mm"])
    if fid is not None:
        fid = np.asarray(fid, dtype=np.float64)
        sigma = float(expected_tre(fid, fid.mean(axis=0, keepdims=True), fle)[0])
    elif tre.size:
        sigma = float(tre.max())
    else:  # neither fiducials nor targets: the FLE is the best figure left
        sigma = fle
    return EdgeUncertainty(name, "registration", sigma, f.source, fid, fle, targets, tre)


def _merge_spin(name: str, matrix: F64, f: CalibrationFile, static: dict[str, tuple[F64, str]],
                unc: dict[str, EdgeUncertainty]) -> None:
    tool = _tool_of_tip_frame(name)
    rms = f.values.get("tip_rms_mm")
    if name in static:
        prev, prev_source = static[name]
        d = float(np.linalg.norm(prev[:3, 3] - matrix[:3, 3]))
        if tool is None or d > MAX_TIP_DISAGREEMENT_MM:
            raise RoomSetupError(
                f"{f.source}: {name} disagrees with {prev_source} (tips {d:.2f} mm apart, "
                f"limit {MAX_TIP_DISAGREEMENT_MM} mm): was the spin computed with this pivot?")
        if rms is None and name in unc:
            rms = unc[name].sigma_mm
    static[name] = (matrix, f.source)
    if rms is not None:
        unc[name] = EdgeUncertainty(name, "calibration", float(rms), f.source)
    else:
        unc.pop(name, None)


def load_room(paths: Sequence[str | os.PathLike[str]]) -> RoomSetup:
    """Read and combine calibration files (``guidance run --calibration FILE ...``).

    Raises:
        CalibrationFileError: an unreadable or invalid file (naming it and the key).
        RoomSetupError: files that cannot be used together.
    """
    return room_setup([load_calibration(p) for p in paths])


def static_room(transforms: Mapping[str, npt.ArrayLike], source: str) -> RoomSetup:
    """A room declared in code, not by calibration files (a benchmark, a test): the given
    static transforms, no declared uncertainty (the safety configuration's values are
    used and the decision says so).

    Args:
        transforms: ``FromToTo`` name -> (4, 4) rigid matrix.
        source: what declared them, named in messages (``"bench: reference = CT"``).
    """
    static = {}
    for name, m in transforms.items():
        parse_transform_name(name)
        static[name] = (np.asarray(m, dtype=np.float64).reshape(4, 4), source)
    return RoomSetup(static=MappingProxyType(static))
