"""A simulated procedure room: a tracker that sees the needle's marker and the patient
reference, a scanner whose frames lag behind, and the raw data the calibrations need.

What a real room feeds ``guidance run`` -- and what the simulated scanner alone does not:

- the tracker reports the *marker* (``NeedleToReference``: the marker's pose, as PLUS
  sends it), ``tip_length_mm`` (150+ mm) behind the tip, with position and rotation
  jitter, at its own rate and on its own connection;
- the patient reference is not the planning CT: ``ReferenceToCT`` is a rigid transform
  with a ``reference_rotation_deg`` rotation, known only through a point registration
  of fiducials localised with error in both frames;
- frames come in their own frame (fluoroscopy: the detector placed in ``Reference``;
  ultrasound: ``Image_Image`` with pixel spacing only and the probe tracked as
  ``ProbeToReference``) and show the room ``image_lag_s`` before their timestamp (the
  image pipeline's latency, what a temporal calibration measures);
- the raw inputs of ``guidance calibrate`` (pivot and spin poses, fiducial pairs, stylus
  observations for the probe, C-arm fiducials and their pixels, tracker and image
  signals of one motion), written by :meth:`SimulatedRoom.write_inputs`.

Ground truth: :meth:`SimulatedRoom.truth` is the tip and axis in the planning CT at a
simulation time; a pose stamped ``ts`` was taken at simulation time ``sim_time(ts)``,
a frame stamped ``ts`` shows simulation time ``sim_time(ts) - image_lag_s``.

Everything random comes from ``np.random.default_rng([seed, ...])``: reproducible.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyigtl
from pyigtl.messages import MessageBase

from guidance.geometry import ImageVolume
from guidance.io.messages import image_message_from_volume
from guidance.io.sim_source import MODALITY_TERMS
from guidance.sim.frames import SimFrame
from guidance.sim.needle_path import NeedlePath
from trackers.pose import pose_from_tip_axis

__all__ = ["RoomParams", "SimulatedRoom", "plan_path", "stream_room"]

F64 = npt.NDArray[np.float64]



def _rotation(axis: npt.ArrayLike, angle_deg: float) -> F64:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def _rigid(rot: F64, trans: npt.ArrayLike) -> F64:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = np.asarray(trans, dtype=np.float64)
    return m


def _jitter(m: F64, rng: np.random.Generator, mm: float, deg: float) -> F64:
    """``m`` with a random small rotation (``deg`` 1-sigma about a random axis) and
    translation (``mm`` 1-sigma per axis) of its marker."""
    out = m.copy()
    if deg > 0:
        out[:3, :3] = m[:3, :3] @ _rotation(rng.normal(size=3), float(rng.normal(0, deg)))
    if mm > 0:
        out[:3, 3] += rng.normal(0, mm, 3)
    return out


@dataclass(frozen=True)
class RoomParams:
    """The simulated room.

    Attributes:
        tip_length_mm: marker origin to the needle tip along the shaft, mm.
        marker_lateral_mm: the marker's origin off the shaft's line, mm (0: behind the
            hub on the shaft's line; otherwise the shaft is not along the tip offset and
            a spin calibration is needed for the axis).
        marker_tilt_deg: the marker frame's z axis tilted from the shaft, degrees (the
            marker frame's orientation is arbitrary in a real tool).
        reference_rotation_deg: rotation of ``ReferenceToCT``, degrees.
        reference_axis: its axis (normalised here).
        reference_origin_mm: the reference marker's origin in the planning CT (LPS mm;
            the default is on the back of the real CT's patient above L1), fixed whatever
            the needle's path, so that calibration data written once serve every run.
        pose_jitter_mm, pose_jitter_deg: tracker noise of every marker pose (1 sigma).
        image_lag_s: a frame stamped ``t`` shows the room at ``t - image_lag_s``.
        pose_hz: tracker rate, Hz.
        n_fiducials: fiducials of the point registration.
        fle_mm: their localisation error (1 sigma per axis) in the CT and with the
            tracked stylus, mm.
        pixel_noise_px: detection noise of fiducials in images, pixels.
        relative_to: ``Reference`` (PLUS: ``NeedleToReference``) or ``Tracker``
            (``NeedleToTracker`` and ``ReferenceToTracker``).
    """

    tip_length_mm: float = 160.0
    marker_lateral_mm: float = 0.0
    marker_tilt_deg: float = 20.0
    reference_rotation_deg: float = 25.0
    reference_axis: tuple[float, float, float] = (0.3, -0.5, 0.8)
    reference_origin_mm: tuple[float, float, float] = (64.0, 142.0, -235.0)
    pose_jitter_mm: float = 0.08
    pose_jitter_deg: float = 0.02
    image_lag_s: float = 0.08
    pose_hz: float = 60.0
    n_fiducials: int = 6
    fle_mm: float = 0.25
    pixel_noise_px: float = 0.3
    relative_to: str = "Reference"

    def __post_init__(self) -> None:
        if not self.tip_length_mm >= 20.0:
            raise ValueError(f"tip_length_mm must be >= 20, got {self.tip_length_mm}")
        if self.relative_to not in ("Reference", "Tracker"):
            raise ValueError(f"relative_to must be Reference or Tracker, got "
                             f"{self.relative_to!r}")
        if not 0.0 <= self.image_lag_s <= 0.5:
            raise ValueError(f"image_lag_s must be in [0, 0.5], got {self.image_lag_s}")
        if not self.pose_hz > 0:
            raise ValueError(f"pose_hz must be > 0, got {self.pose_hz}")
        if self.n_fiducials < 4:
            raise ValueError(f"n_fiducials must be >= 4, got {self.n_fiducials}")


def plan_path(entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike, speed_mm_s: float = 10.0,
              drift_deg_s: float = 0.0, seed: int = 0) -> NeedlePath:
    """A needle advancing along a plan (entry -> target, LPS mm of the planning CT) at
    ``speed_mm_s``, drifting ``drift_deg_s`` about a seeded axis (0: on the line)."""
    from guidance.sim.needle_path import random_perpendicular
    from guidance.sim.params import NeedleParams

    entry = np.asarray(entry_lps, dtype=np.float64).reshape(3)
    target = np.asarray(target_lps, dtype=np.float64).reshape(3)
    rng = np.random.default_rng([seed, 0x9A7])
    return NeedlePath(entry_lps=entry, target_lps=target,
                      needle=NeedleParams(speed_mm_s=speed_mm_s, drift_deg_s=drift_deg_s,
                                          length_mm=150.0),
                      drift_axis_lps=random_perpendicular(target - entry, rng))


class SimulatedRoom:
    """The room around a needle path (and optionally a simulated scanner).

    Args:
        path: the needle's motion in the planning CT (a scanner's ``path``, or one made
            from a plan for navigation without images).
        params: the room.
        seed: seed of every random choice.
        scanner: the simulated scanner whose frames are streamed (``None``: poses only).

    Attributes:
        reference_to_ct: (4, 4) true ``ReferenceToCT``.
        reference_to_tracker: (4, 4) true ``ReferenceToTracker`` (the camera 1.5 m away).
        tip_to_marker: (4, 4) true ``NeedleTipToNeedle``.
        image_to_probe: (4, 4) true ``ImageToProbe`` (ultrasound only, else ``None``).
        wall0: the wall time (s, the messages' timestamps) of simulation time
            ``start_s`` (:meth:`clock`).
    """

    def __init__(self, path: NeedlePath, params: RoomParams | None = None, seed: int = 0,
                 scanner: Any = None) -> None:
        self.path = path
        self.params = p = params or RoomParams()
        self.seed = int(seed)
        self.scanner = scanner
        self.modality: str = getattr(scanner, "modality", "none") if scanner else "none"
        rot = _rotation(p.reference_axis, p.reference_rotation_deg)
        self.reference_to_ct = _rigid(rot, np.asarray(p.reference_origin_mm, dtype=np.float64))
        self.ct_to_reference = np.linalg.inv(self.reference_to_ct)
        self.reference_to_tracker = _rigid(_rotation((1.0, 0.2, -0.1), 140.0),
                                           (120.0, -80.0, -1500.0))
        # The marker: origin behind the hub, its z axis tilted from the shaft, possibly
        # off the shaft's line.
        tilt = _rotation((1.0, 1.0, 0.0), p.marker_tilt_deg)
        shaft_in_marker = tilt @ np.array([0.0, 0.0, 1.0])
        side = np.cross(shaft_in_marker, [0.0, 1.0, 0.0])
        side /= np.linalg.norm(side)
        tip = p.tip_length_mm * shaft_in_marker + p.marker_lateral_mm * side
        self.tip_to_marker = pose_from_tip_axis(tip, shaft_in_marker)
        self.marker_to_tip = np.linalg.inv(self.tip_to_marker)
        self.image_to_probe: F64 | None = None
        self._ijk_to_image: F64 | None = None
        if self.modality == "us":
            s = float(scanner.spacing_mm)
            n = int(scanner.size)
            self.image_to_probe = _rigid(np.eye(3), [-(n - 1) / 2.0 * s, 0.5 * s, 0.0])
            self._ijk_to_image = np.diag([s, s, 1.0, 1.0])
        self.wall0 = time.time()
        self._start_s = 0.0

    # -- truth -------------------------------------------------------------------------

    def truth(self, t_sim: float) -> tuple[F64, F64]:
        """(tip, axis) of the needle in the planning CT (LPS mm) at simulation time."""
        st = self.path.state(t_sim)
        return st.tip_lps, st.axis_lps

    def clock(self, start_s: float, wall0: float | None = None) -> None:
        """Anchor simulation time ``start_s`` at wall time ``wall0`` (default now): the
        timestamps of the streamed messages are wall times."""
        self._start_s = float(start_s)
        self.wall0 = time.time() if wall0 is None else float(wall0)

    def sim_time(self, timestamp_s: float) -> float:
        """Simulation time of a sender timestamp (wall clock)."""
        return self._start_s + (timestamp_s - self.wall0)

    def truth_at_timestamp(self, timestamp_s: float, image: bool = False) -> tuple[F64, F64]:
        """Truth for a message stamped ``timestamp_s``: a pose shows that time, a frame
        (``image=True``) the time ``image_lag_s`` earlier."""
        lag = self.params.image_lag_s if image else 0.0
        return self.truth(self.sim_time(timestamp_s) - lag)

    # -- the tracker -------------------------------------------------------------------

    def marker_to_reference(self, t_sim: float, rng: np.random.Generator | None) -> F64:
        """``NeedleToReference`` (the marker's pose) at simulation time, jittered when
        ``rng`` is given."""
        tip, axis = self.truth(t_sim)
        tip_to_reference = self.ct_to_reference @ pose_from_tip_axis(tip, axis)
        m = tip_to_reference @ self.marker_to_tip
        if rng is None:
            return m
        return _jitter(m, rng, self.params.pose_jitter_mm, self.params.pose_jitter_deg)

    def pose_messages(self, t_sim: float, timestamp_s: float,
                      rng: np.random.Generator) -> list[MessageBase]:
        """The tracker's messages of one tick: the needle marker (and the probe, for
        ultrasound), relative to the reference or to the tracker."""
        p = self.params
        poses = {"Needle": self.marker_to_reference(t_sim, rng)}
        if self.modality == "us":
            probe = self.ct_to_reference @ self.scanner.probe_to_lps
            poses["Probe"] = _jitter(probe, rng, p.pose_jitter_mm, p.pose_jitter_deg)
        out: list[MessageBase] = []
        if p.relative_to == "Tracker":
            ref = _jitter(self.reference_to_tracker, rng, p.pose_jitter_mm, p.pose_jitter_deg)
            out.append(pyigtl.TransformMessage(ref, timestamp=timestamp_s,
                                               device_name="ReferenceToTracker"))
            for tool, m in poses.items():
                out.append(pyigtl.TransformMessage(self.reference_to_tracker @ m,
                                                   timestamp=timestamp_s,
                                                   device_name=f"{tool}ToTracker"))
        else:
            for tool, m in poses.items():
                out.append(pyigtl.TransformMessage(m, timestamp=timestamp_s,
                                                   device_name=f"{tool}ToReference"))
        return out

    # -- the scanner -------------------------------------------------------------------

    def image_message(self, index: int, t_content: float, timestamp_s: float
                      ) -> tuple[MessageBase, SimFrame]:
        """The frame showing simulation time ``t_content``, stamped ``timestamp_s``, as
        the room's scanner sends it (IGTLv3 metadata ``Modality``)."""
        frame = self.scanner.frame(index, t_content)
        if self.modality == "us":
            assert self._ijk_to_image is not None
            vol = ImageVolume(frame.image.voxels, self._ijk_to_image)
            device = "Image_Image"
        else:  # the detector placed in the reference frame
            vol = ImageVolume(frame.image.voxels, self.ct_to_reference @ frame.image.ijk_to_lps)
            device = "Image_Reference"
        msg = image_message_from_volume(vol, device, timestamp_s, "lps")
        msg.header_version = 2
        msg.metadata = {"Modality": MODALITY_TERMS.get(self.modality, "OT")}
        return msg, frame

    # -- calibration inputs ------------------------------------------------------------

    def _rng(self, what: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0xCA1, what])

    def pivot_input(self, n: int = 120) -> dict[str, Any]:
        """``calibrate pivot`` input: the needle pivoting about its tip (a divot on the
        reference), +-25 deg in two directions; marker poses in the reference frame."""
        rng = self._rng(1)
        divot = np.array([10.0, -20.0, 30.0])
        poses = []
        for _ in range(n):
            tilt = _rotation(rng.normal(size=3), float(rng.uniform(-25, 25)))
            rot = tilt @ _rotation((0, 0, 1), float(rng.uniform(0, 360)))
            tip_to_ref = _rigid(rot, divot)
            m = tip_to_ref @ self.marker_to_tip
            poses.append(_jitter(m, rng, self.params.pose_jitter_mm,
                                 self.params.pose_jitter_deg).tolist())
        return {"poses": poses}

    def spin_input(self, n: int = 36) -> dict[str, Any]:
        """``calibrate spin`` input: the needle spun about its shaft (+-80 deg), marker
        poses in the reference frame."""
        rng = self._rng(2)
        base = _rigid(_rotation((0.2, 1.0, 0.1), 35.0), (5.0, 5.0, 40.0))
        poses = []
        for a in np.linspace(-80, 80, n):
            spin = _rigid(_rotation((0, 0, 1), float(a)), np.zeros(3))  # about the tip's z
            m = base @ spin @ self.marker_to_tip
            poses.append(_jitter(m, rng, self.params.pose_jitter_mm,
                                 self.params.pose_jitter_deg).tolist())
        return {"poses": poses}

    def fiducials_input(self) -> dict[str, Any]:
        """``calibrate register`` input (``--name ReferenceToCT``): skin fiducials around
        the entry, localised in the CT (fixed) and with the tracked stylus in the
        reference frame (moving), each with ``fle_mm`` error."""
        rng = self._rng(3)
        p = self.params
        n = p.n_fiducials
        # Spread around the path, not coplanar: 60-90 mm from the entry.
        centre = 0.5 * (self.path.entry_lps + self.path.target_lps)
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        ct = centre + dirs * rng.uniform(60, 90, (n, 1))
        ref = ct @ self.ct_to_reference[:3, :3].T + self.ct_to_reference[:3, 3]
        return {"fixed_mm": (ct + rng.normal(0, p.fle_mm, ct.shape)).tolist(),
                "moving_mm": (ref + rng.normal(0, p.fle_mm, ref.shape)).tolist()}

    def probe_input(self, n: int = 16) -> dict[str, Any] | None:
        """``calibrate probe`` input (ultrasound): the tracked stylus tip seen in the
        image at ``n`` places, the probe moved between observations."""
        if self.image_to_probe is None:
            return None
        rng = self._rng(4)
        s = float(self.scanner.spacing_mm)
        size = int(self.scanner.size)
        probe_poses, tips, pixels = [], [], []
        for _ in range(n):
            probe = _rigid(_rotation(rng.normal(size=3), float(rng.uniform(0, 40))),
                           rng.uniform(-50, 50, 3))
            uv = rng.uniform(0.1 * size, 0.9 * size, 2)
            image_pt = np.array([uv[0] * s, uv[1] * s, 0.0, 1.0])
            tip = (probe @ self.image_to_probe @ image_pt)[:3]
            probe_poses.append(_jitter(probe, rng, self.params.pose_jitter_mm,
                                       self.params.pose_jitter_deg).tolist())
            tips.append((tip + rng.normal(0, self.params.fle_mm, 3)).tolist())
            pixels.append((uv + rng.normal(0, self.params.pixel_noise_px, 2)).tolist())
        return {"probe_to_tracker": probe_poses, "stylus_tip_tracker_mm": tips,
                "pixels": pixels, "pixel_spacing_mm": [s, s]}

    def carm_input(self, n: int = 16) -> dict[str, Any] | None:
        """``calibrate carm`` input (fluoroscopy, ``--name ReferenceToCArm``): radio-opaque
        fiducials known in the reference frame (a calibration frame on the patient
        reference) and their detections in the image, ``pixel_noise_px`` noise."""
        if self.modality != "fluoro":
            return None
        rng = self._rng(5)
        g = self.scanner.geometry
        iso = g.carm_to_lps[:3, 3]
        pts_ct = iso + rng.uniform(-60, 60, (n, 3))
        pts_ref = pts_ct @ self.ct_to_reference[:3, :3].T + self.ct_to_reference[:3, 3]
        px = g.project_points(pts_ct) + rng.normal(0, self.params.pixel_noise_px, (n, 2))
        return {"points_mm": pts_ref.tolist(), "pixels": px.tolist()}

    def temporal_input(self, seconds: float = 12.0, image_hz: float = 15.0) -> dict[str, Any]:
        """``calibrate temporal`` input: one back-and-forth motion seen by the tracker
        (``a``, at the tracker's rate) and in the images (``b``, at the frame rate,
        ``image_lag_s`` late), mm along the motion."""
        rng = self._rng(6)

        def motion(t: np.ndarray) -> np.ndarray:
            return 8.0 * np.sin(2 * np.pi * 0.45 * t) + 3.0 * np.sin(2 * np.pi * 1.3 * t)

        ta = np.arange(0.0, seconds, 1.0 / self.params.pose_hz)
        tb = np.arange(0.0, seconds, 1.0 / image_hz)
        xa = motion(ta) + rng.normal(0, self.params.pose_jitter_mm, ta.size)
        xb = motion(tb - self.params.image_lag_s) + rng.normal(0, 0.3, tb.size)
        return {"a": {"t_s": ta.tolist(), "x": xa.tolist()},
                "b": {"t_s": tb.tolist(), "x": xb.tolist()}}

    def write_inputs(self, out_dir: Path) -> dict[str, Path]:
        """Write every calibration input this room has as ``<kind>.json`` in ``out_dir``
        (pivot, spin, fiducials, temporal; probe for ultrasound; carm for fluoroscopy).

        Returns:
            kind -> path written.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        docs = {"pivot": self.pivot_input(), "spin": self.spin_input(),
                "fiducials": self.fiducials_input(), "temporal": self.temporal_input(),
                "probe": self.probe_input(), "carm": self.carm_input()}
        written = {}
        for kind, doc in docs.items():
            if doc is None:
                continue
            path = out_dir / f"{kind}.json"
            path.write_text(json.dumps(doc) + "\n")
            written[kind] = path
        return written


def stream_room(
    room: SimulatedRoom,
    send_pose: Callable[[MessageBase], object],
    send_image: Callable[[MessageBase], object] | None,
    fps: float,
    seconds: float | None,
    stop: threading.Event,
    start_s: float = 0.0,
    on_frame: Callable[[SimFrame, float], None] | None = None,
) -> tuple[int, int]:
    """Stream the room: the tracker's poses at ``pose_hz`` and (with ``send_image`` and a
    scanner) frames at ``fps``, on two threads with their own deadlines, until
    ``seconds`` pass or ``stop`` is set.

    Args:
        room: the room (its clock is anchored here: simulation time ``start_s`` = now).
        send_pose: the tracker's transport send.
        send_image: the scanner's transport send (``None``: poses only).
        fps: frame rate, > 0.
        seconds: duration (``None``: until ``stop``).
        stop: set it to stop.
        start_s: simulation time of the first pose.
        on_frame: called with each frame sent and its timestamp (ground truth).

    Returns:
        (poses ticks sent, frames sent).
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    t0 = time.monotonic()
    room.clock(start_s)
    counts = [0, 0]

    def loop(period: float, tick: Callable[[int, float], None], slot: int) -> None:
        n = 0
        while not stop.is_set():
            t_rel = n * period
            if seconds is not None and t_rel >= seconds:
                break
            tick(n, t_rel)
            n += 1
            counts[slot] = n
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    rng = np.random.default_rng([room.seed, 0x7EAC])

    def pose_tick(n: int, t_rel: float) -> None:
        ts = room.wall0 + t_rel
        for msg in room.pose_messages(start_s + t_rel, ts, rng):
            send_pose(msg)

    def image_tick(n: int, t_rel: float) -> None:
        ts = room.wall0 + t_rel
        msg, frame = room.image_message(n, start_s + t_rel - room.params.image_lag_s, ts)
        assert send_image is not None
        send_image(msg)
        if on_frame is not None:
            on_frame(frame, ts)

    threads = [threading.Thread(target=loop, args=(1.0 / room.params.pose_hz, pose_tick, 0),
                                name="sim-tracker", daemon=True)]
    if send_image is not None and room.scanner is not None:
        threads.append(threading.Thread(target=loop, args=(1.0 / fps, image_tick, 1),
                                        name="sim-scanner", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return counts[0], counts[1]
