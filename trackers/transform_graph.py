"""The transform graph: named rigid transforms between frames, composed along paths.

Names follow the PLUS/Slicer ``FromToTo`` convention on the wire (``NeedleTipToTracker``)
and map points given in the "from" frame to the "to" frame, mm. Each stored transform
keeps its inverse, its receive time and its validity, so that a query returns, together
with the composed matrix, the age of the oldest transform on the path and the worst
state along it (DESIGN.md: staleness is judged from age, never from content, and an
identity matrix from a tracker - what some send for a tool out of view - is not trusted).
"""

from __future__ import annotations

import enum
import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration.rigid import invert_rigid, is_identity, validate_rigid

__all__ = [
    "FRAME_PATTERN",
    "NoPathError",
    "TransformGraph",
    "TransformQuery",
    "TransformState",
    "parse_transform_name",
]

#: A frame name: an upper-case letter, then letters and digits (``NeedleTip``, ``CT``).
FRAME_PATTERN = re.compile(r"[A-Z][A-Za-z0-9]*")
_NAME_PATTERN = re.compile(r"^[A-Z][A-Za-z0-9]*To[A-Z][A-Za-z0-9]*$")


def parse_transform_name(name: object) -> tuple[str, str]:
    """Split a ``FromToTo`` name into its two frames.

    The separator is a ``To`` followed by an upper-case letter, not at the start; there
    must be exactly one (``StylusToToolToTracker`` is ambiguous and refused; ``ToolToTracker``
    is ``Tool`` -> ``Tracker``).

    Args:
        name: e.g. ``"NeedleTipToTracker"``.

    Returns:
        ``(from_frame, to_frame)``, e.g. ``("NeedleTip", "Tracker")``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: it does not match ``^[A-Z][A-Za-z0-9]*To[A-Z][A-Za-z0-9]*$`` or has
            more than one separator.
    """
    if not isinstance(name, str):
        raise TypeError(f"transform name must be a str, got {type(name).__name__}")
    if not _NAME_PATTERN.match(name):
        raise ValueError(
            f"transform name must look like 'FromToTo' (e.g. 'NeedleTipToTracker'), got {name!r}"
        )
    splits = [m.start() for m in re.finditer(r"(?=To[A-Z])", name) if m.start() > 0]
    if len(splits) != 1:
        raise ValueError(
            f"transform name {name!r} is ambiguous: {len(splits)} possible 'To' separators"
        )
    i = splits[0]
    return name[:i], name[i + 2 :]


def _check_frame(frame: object, param: str) -> str:
    if not isinstance(frame, str):
        raise TypeError(f"{param} must be a str, got {type(frame).__name__}")
    if not FRAME_PATTERN.fullmatch(frame):
        raise ValueError(f"{param} must match [A-Z][A-Za-z0-9]*, got {frame!r}")
    return frame


class TransformState(enum.IntEnum):
    """Trust in a transform or a composed path; ordered so that ``max()`` is the worst.

    ``OK``: fresh and valid. ``STALE``: older than its age threshold. ``IDENTITY``: an
    exact identity matrix received from a tracker (typically a tool out of view); not
    trusted. ``INVALID``: the sender flagged it invalid.
    """

    OK = 0
    STALE = 1
    IDENTITY = 2
    INVALID = 3


@dataclass(frozen=True, eq=False)
class TransformQuery:
    """Answer of :meth:`TransformGraph.query`.

    Attributes:
        from_frame: source frame.
        to_frame: destination frame.
        matrix: (4, 4) float64 ``from_to_to``, mm.
        age_s: age of the oldest live (non-static) transform on the path, seconds of local
            monotonic time; 0 when the path has only static transforms.
        state: worst :class:`TransformState` along the path.
        path: frames visited, ``(from_frame, ..., to_frame)``.
    """

    from_frame: str
    to_frame: str
    matrix: npt.NDArray[np.float64]
    age_s: float
    state: TransformState
    path: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every transform on the path is fresh and trusted."""
        return self.state is TransformState.OK


class NoPathError(LookupError):
    """No chain of transforms joins the two frames (yet)."""


@dataclass(frozen=True, eq=False)
class _Edge:
    matrix: npt.NDArray[np.float64]
    received_ns: int
    max_age_s: float
    valid: bool
    identity: bool
    static: bool


class TransformGraph:
    """Named rigid transforms between frames, with inverses, staleness and path queries.

    Thread-safe: every method takes one internal lock (a ``threading.Lock``), so tracker
    threads may :meth:`update` while the pipeline thread calls :meth:`query`; a query
    sees a consistent snapshot. Matrices handed out are copies.

    Args:
        default_max_age_s: age above which a live transform is ``STALE`` unless a
            per-transform threshold is given.
        clock_ns: local monotonic clock in ns (injectable for tests).
    """

    def __init__(
        self,
        default_max_age_s: float = 0.2,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if isinstance(default_max_age_s, bool) or not isinstance(default_max_age_s, (int, float)):
            raise TypeError(
                f"default_max_age_s must be a number, got {type(default_max_age_s).__name__}"
            )
        if not np.isfinite(default_max_age_s) or default_max_age_s <= 0:
            raise ValueError(f"default_max_age_s must be > 0, got {default_max_age_s}")
        self._default_max_age_s = float(default_max_age_s)
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._edges: dict[tuple[str, str], _Edge] = {}
        self._adjacent: dict[str, set[str]] = {}

    def _store(
        self,
        name: str,
        a_to_b: object,
        received_ns: int,
        max_age_s: float,
        valid: bool,
        *,
        static: bool,
    ) -> None:
        src, dst = parse_transform_name(name)
        if src == dst:
            raise ValueError(f"transform name {name!r} maps a frame to itself")
        m = validate_rigid(a_to_b, name)
        identity = not static and is_identity(m)
        fwd = _Edge(m, received_ns, max_age_s, valid, identity, static)
        bwd = _Edge(invert_rigid(m), received_ns, max_age_s, valid, identity, static)
        with self._lock:
            self._edges[(src, dst)] = fwd
            self._edges[(dst, src)] = bwd
            self._adjacent.setdefault(src, set()).add(dst)
            self._adjacent.setdefault(dst, set()).add(src)

    def update(
        self,
        name: str,
        a_to_b: npt.ArrayLike,
        received_ns: int | None = None,
        *,
        valid: bool = True,
        max_age_s: float | None = None,
    ) -> None:
        """Store a live (tracked) transform; its inverse is stored too.

        Args:
            name: ``FromToTo`` name, e.g. ``"StylusToTracker"``.
            a_to_b: (4, 4) rigid matrix, mm.
            received_ns: local ``time.monotonic_ns()`` at reception; default now.
            valid: the sender's validity flag.
            max_age_s: staleness threshold for this transform; default the graph's.

        Raises:
            TypeError, ValueError: bad name, non-rigid / non-finite / non-4x4 matrix, bad
                threshold.
        """
        if max_age_s is None:
            max_age = self._default_max_age_s
        else:
            if isinstance(max_age_s, bool) or not isinstance(max_age_s, (int, float)):
                raise TypeError(f"max_age_s must be a number, got {type(max_age_s).__name__}")
            if not np.isfinite(max_age_s) or max_age_s <= 0:
                raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
            max_age = float(max_age_s)
        if received_ns is None:
            received_ns = self._clock_ns()
        elif isinstance(received_ns, bool) or not isinstance(received_ns, (int, np.integer)):
            raise TypeError(f"received_ns must be an int, got {type(received_ns).__name__}")
        if not isinstance(valid, (bool, np.bool_)):
            raise TypeError(f"valid must be a bool, got {type(valid).__name__}")
        self._store(name, a_to_b, int(received_ns), max_age, bool(valid), static=False)

    def set_static(self, name: str, a_to_b: npt.ArrayLike) -> None:
        """Store a static transform (a calibration result): never stale, and an identity
        matrix is accepted as such. Its inverse is stored too.

        Raises:
            TypeError, ValueError: bad name or non-rigid matrix.
        """
        self._store(name, a_to_b, 0, float("inf"), True, static=True)

    def remove(self, name: str) -> None:
        """Forget a transform and its inverse (KeyError naming it if absent)."""
        src, dst = parse_transform_name(name)
        with self._lock:
            if (src, dst) not in self._edges:
                raise KeyError(f"no transform {name!r} in the graph")
            del self._edges[(src, dst)]
            del self._edges[(dst, src)]
            self._adjacent[src].discard(dst)
            self._adjacent[dst].discard(src)

    def frames(self) -> tuple[str, ...]:
        """Every frame that has at least one transform, sorted."""
        with self._lock:
            return tuple(sorted(f for f, nb in self._adjacent.items() if nb))

    def _path(self, src: str, dst: str) -> list[str] | None:
        # Breadth-first search: the path with the fewest transforms.
        if src == dst:
            return [src]
        previous: dict[str, str] = {src: src}
        todo = deque([src])
        while todo:
            frame = todo.popleft()
            for nxt in sorted(self._adjacent.get(frame, ())):
                if nxt in previous:
                    continue
                previous[nxt] = frame
                if nxt == dst:
                    path = [dst]
                    while path[-1] != src:
                        path.append(previous[path[-1]])
                    return path[::-1]
                todo.append(nxt)
        return None

    def query(
        self, from_frame: str, to_frame: str | None = None, *, now_ns: int | None = None
    ) -> TransformQuery:
        """Compose ``from_frame_to_to_frame`` along the shortest path.

        Args:
            from_frame: a frame name, or a whole ``FromToTo`` name when ``to_frame`` is
                omitted (``query("NeedleTipToCT")``).
            to_frame: destination frame.
            now_ns: the local monotonic time at which ages are judged; default now.

        Returns:
            :class:`TransformQuery` (matrix, oldest age, worst state, path).

        Raises:
            TypeError, ValueError: bad frame names.
            NoPathError: the frames are not connected.
        """
        if to_frame is None:
            src, dst = parse_transform_name(from_frame)
        else:
            src = _check_frame(from_frame, "from_frame")
            dst = _check_frame(to_frame, "to_frame")
        now = self._clock_ns() if now_ns is None else int(now_ns)
        with self._lock:
            path = self._path(src, dst)
            if path is None:
                known = sorted(f for f, nb in self._adjacent.items() if nb)
                raise NoPathError(f"no path from {src!r} to {dst!r} (known frames: {known})")
            edges = [self._edges[(a, b)] for a, b in itertools.pairwise(path)]
        matrix = np.eye(4)
        age_s = 0.0
        state = TransformState.OK
        for e in edges:
            matrix = e.matrix @ matrix
            if e.static:
                continue
            age = (now - e.received_ns) * 1e-9
            age_s = max(age_s, age)
            if not e.valid:
                state = max(state, TransformState.INVALID)
            elif e.identity:
                state = max(state, TransformState.IDENTITY)
            elif age > e.max_age_s:
                state = max(state, TransformState.STALE)
        return TransformQuery(
            from_frame=src,
            to_frame=dst,
            matrix=matrix,
            age_s=age_s,
            state=TransformState(state),
            path=tuple(path),
        )
