"""Tracked-tool streams: incoming TRANSFORM / TDATA values to :class:`TrackedPose`.

The OpenIGTLink layer (in ``guidance.io``) decodes messages and hands plain values here
(name, 4x4 matrix, sender timestamp, local receive time); this module does not import
``guidance``. Each accepted pose updates the transform graph (timestamped, so that the
graph can interpolate it to a frame's time), the per-tool latest pose, and a short
per-tool ring buffer used for calibration capture.

Time base: the graph's samples are placed on the sender's clock (``time_base="sender"``,
the PLUS convention: tracker and scanner stamp with one clock) or on the local receive
time (``"receive"``, for senders without a usable clock). A sender timestamp of 0 (not
set) falls back to the receive time.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from calibration.rigid import is_identity, validate_rigid
from trackers.interpolation import matrix_from_quat
from trackers.pose import TrackedPose
from trackers.transform_graph import FRAME_PATTERN, TransformGraph, parse_transform_name

__all__ = ["ToolStreams"]

_log = logging.getLogger(__name__)


class ToolStreams:
    """Latest pose and a short history per tracked tool, feeding a transform graph.

    Thread-safe: one internal lock guards the latest poses, ring buffers and counters
    (the graph has its own lock). Bad poses from the wire are not raised to the receive
    loop: they are logged, counted in :attr:`rejected` and dropped, so other tools keep
    being served.

    Args:
        graph: transform graph to update (``None``: keep poses only).
        reference_frame: frame appended to bare TDATA tool names (``Stylus`` ->
            ``StylusToTracker``).
        buffer_len: poses kept per tool for capture (oldest dropped first).
        max_age_s: staleness threshold passed to the graph for every tool transform;
            ``None`` uses the graph's default (or its per-transform limit).
        time_base: ``sender`` or ``receive`` (see the module docstring).
    """

    def __init__(
        self,
        graph: TransformGraph | None = None,
        *,
        reference_frame: str = "Tracker",
        buffer_len: int = 512,
        max_age_s: float | None = None,
        time_base: str = "sender",
    ) -> None:
        if graph is not None and not isinstance(graph, TransformGraph):
            raise TypeError(f"graph must be a TransformGraph or None, got {type(graph).__name__}")
        if not isinstance(reference_frame, str) or not FRAME_PATTERN.fullmatch(reference_frame):
            raise ValueError(
                f"reference_frame must match [A-Z][A-Za-z0-9]*, got {reference_frame!r}"
            )
        if isinstance(buffer_len, bool) or not isinstance(buffer_len, int):
            raise TypeError(f"buffer_len must be an int, got {type(buffer_len).__name__}")
        if buffer_len < 1:
            raise ValueError(f"buffer_len must be >= 1, got {buffer_len}")
        if time_base not in ("sender", "receive"):
            raise ValueError(f"time_base must be sender or receive, got {time_base!r}")
        self.time_base = time_base
        self._graph = graph
        self._reference = reference_frame
        self._buffer_len = buffer_len
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._latest: dict[str, TrackedPose] = {}
        self._history: dict[str, deque[TrackedPose]] = {}
        self.rejected = 0
        """Number of poses dropped because of a bad name, matrix or time."""
        self.rejections: dict[str, int] = {}
        """Dropped poses by ``"<name>: <reason>"`` (the reason without numbers)."""
        self.last_rejection = ""
        """The newest rejection, in full."""

    def transform_name(self, tool: str) -> str:
        """``FromToTo`` name of a tool: unchanged if it already is one, else
        ``<tool>To<reference_frame>``."""
        try:
            parse_transform_name(tool)
            return tool
        except ValueError:
            return f"{tool}To{self._reference}"

    def on_transform(
        self,
        name: str,
        matrix: npt.ArrayLike,
        timestamp_s: float,
        received_ns: int,
        *,
        valid: bool = True,
    ) -> TrackedPose | None:
        """Take one TRANSFORM message's values.

        Args:
            name: device name, ``FromToTo`` (a bare tool name gets ``To<reference>``).
            matrix: (4, 4) ``from_to_to``, mm.
            timestamp_s: sender's timestamp, seconds.
            received_ns: local ``time.monotonic_ns()`` at reception.
            valid: sender's validity flag, if the protocol carries one.

        Returns:
            The :class:`TrackedPose` stored, or ``None`` when the pose was rejected (bad
            name, non-rigid or non-finite matrix). An exact identity matrix is stored with
            ``valid=False`` (a tracker sends it for a tool out of view) and the graph
            flags it ``IDENTITY``.
        """
        try:
            full = self.transform_name(name)
            parse_transform_name(full)
            m = validate_rigid(matrix, full)
            ts = float(timestamp_s)
            if not np.isfinite(ts):
                raise ValueError(f"{full}: timestamp {timestamp_s!r} is not finite")
        except (TypeError, ValueError) as e:
            self._reject(name, e)
            return None
        identity = is_identity(m)
        pose = TrackedPose(
            name=full,
            pose=m,
            timestamp_s=ts,
            received_ns=int(received_ns),
            valid=bool(valid) and not identity,
        )
        if self._graph is not None:
            t = ts if self.time_base == "sender" and ts != 0.0 else int(received_ns) * 1e-9
            self._graph.update(full, m, int(received_ns), valid=bool(valid),
                               max_age_s=self._max_age_s, timestamp_s=t)
        with self._lock:
            self._latest[full] = pose
            self._history.setdefault(full, deque(maxlen=self._buffer_len)).append(pose)
        return pose

    def _reject(self, name: object, error: Exception) -> None:
        text = str(error)
        key = f"{name!s:.40}: " + "".join("#" if c.isdigit() else c for c in text)[:80]
        with self._lock:
            self.rejected += 1
            self.rejections[key] = self.rejections.get(key, 0) + 1
            self.last_rejection = f"{name!s:.40}: {text}"
        _log.warning("dropped pose %r: %s", name, text)

    def on_position(
        self,
        name: str,
        position: npt.ArrayLike,
        quaternion: npt.ArrayLike | None,
        timestamp_s: float,
        received_ns: int,
    ) -> TrackedPose | None:
        """Take one POSITION message's values: position (mm) and the orientation
        quaternion ``(ox, oy, oz, w)`` as on the wire. A POSITION without orientation
        (``quaternion=None``) is not a pose and is refused (counted)."""
        if quaternion is None:
            self._reject(name, ValueError(
                f"{name}: POSITION without orientation is not a pose (the needle's axis and "
                "a tip offset need the rotation)"))
            return None
        try:
            q = np.asarray(quaternion, dtype=np.float64).reshape(4)
            p = np.asarray(position, dtype=np.float64).reshape(3)
            norm = float(np.linalg.norm(q))
            if not np.isfinite(norm) or abs(norm - 1.0) > 1e-3:
                raise ValueError(f"{name}: quaternion norm {norm:.4g} is not 1")
        except (TypeError, ValueError) as e:
            self._reject(name, e)
            return None
        m = np.eye(4)
        m[:3, :3] = matrix_from_quat(np.array([q[3], q[0], q[1], q[2]]))
        m[:3, 3] = p
        return self.on_transform(name, m, timestamp_s, received_ns)

    def on_tdata(
        self,
        elements: Iterable[tuple[str, npt.ArrayLike]],
        timestamp_s: float,
        received_ns: int,
    ) -> list[TrackedPose]:
        """Take one TDATA message's values: ``(tool name, 4x4 matrix)`` per element, all
        with the message's timestamps. Returns the poses stored (rejected ones omitted)."""
        out: list[TrackedPose] = []
        for name, matrix in elements:
            pose = self.on_transform(name, matrix, timestamp_s, received_ns)
            if pose is not None:
                out.append(pose)
        return out

    def latest(self, name: str) -> TrackedPose | None:
        """Newest pose of a tool (``FromToTo`` or bare name), or ``None``."""
        with self._lock:
            return self._latest.get(self.transform_name(name))

    def history(self, name: str) -> tuple[TrackedPose, ...]:
        """The buffered poses of a tool, oldest first."""
        with self._lock:
            return tuple(self._history.get(self.transform_name(name), ()))

    def names(self) -> tuple[str, ...]:
        """Transform names seen so far, sorted."""
        with self._lock:
            return tuple(sorted(self._latest))

    @staticmethod
    def stack(poses: Iterable[TrackedPose], valid_only: bool = True) -> npt.NDArray[np.float64]:
        """(N, 4, 4) matrices of ``poses`` (only valid ones by default)."""
        mats = [p.pose for p in poses if p.valid or not valid_only]
        return np.array(mats, dtype=np.float64).reshape(-1, 4, 4)
