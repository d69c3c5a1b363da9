"""The transform graph: named rigid transforms between frames, composed along paths.

Names follow the PLUS/Slicer ``FromToTo`` convention on the wire (``NeedleTipToTracker``)
and map points given in the "from" frame to the "to" frame, mm. Two kinds of edge:

- *live* edges (tracked poses): a short history of timestamped samples, each with its
  receive time and validity, and a stale limit of its own. A query may ask for the path
  *at a time* (the sender's clock, e.g. a frame's timestamp minus the temporal
  calibration's lag): every live edge is then interpolated between the two samples that
  bracket that time (linear translation, SLERP rotation: :mod:`trackers.interpolation`);
  outside its history the nearest sample is held (never extrapolated) and the gap is
  reported, STALE beyond the edge's limit.
- *static* edges (calibration and registration results): never stale, with the name of
  the file they came from.

A query returns, with the composed matrix, the age of the oldest live sample on the
path, the worst state along it and one :class:`EdgeUse` per edge (which stored transform,
where from, its age and time gap), so that callers can say which calibration a result
depends on. A query with no path raises :class:`NoPathError`, which carries the frames
reachable from the start so that a caller can name the missing edge
(:mod:`trackers.chains`). DESIGN.md: staleness is judged from age, never from content,
and an identity matrix from a tracker - what some send for a tool out of view - is not
trusted.
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
from trackers.interpolation import interpolate_rigid

__all__ = [
    "FRAME_PATTERN",
    "EdgeUse",
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

    ``OK``: fresh and valid. ``STALE``: older than its age threshold, or no sample near
    the time asked for. ``IDENTITY``: an exact identity matrix received from a tracker
    (typically a tool out of view); not trusted. ``INVALID``: the sender flagged it
    invalid.
    """

    OK = 0
    STALE = 1
    IDENTITY = 2
    INVALID = 3


@dataclass(frozen=True)
class EdgeUse:
    """One stored transform used by a query.

    Attributes:
        name: the stored ``FromToTo`` name (``NeedleToReference``), whichever direction
            the path took it in.
        static: a calibration / registration result (never stale).
        source: static: where it came from (a file name); live: ``"live"``.
        state: this edge's state.
        age_s: live: local age of the newest sample used, s (0 for static).
        time_gap_s: live, queries at a time: how far that time lies outside the
            samples used (0 when two samples bracket it), s.
        max_age_s: live: the edge's stale limit, s (inf for static).
    """

    name: str
    static: bool
    source: str
    state: TransformState
    age_s: float = 0.0
    time_gap_s: float = 0.0
    max_age_s: float = float("inf")


@dataclass(frozen=True, eq=False)
class TransformQuery:
    """Answer of :meth:`TransformGraph.query`.

    Attributes:
        from_frame: source frame.
        to_frame: destination frame.
        matrix: (4, 4) float64 ``from_to_to``, mm.
        age_s: age of the oldest live (non-static) sample on the path, seconds of local
            monotonic time; 0 when the path has only static transforms.
        state: worst :class:`TransformState` along the path.
        path: frames visited, ``(from_frame, ..., to_frame)``.
        edges: one :class:`EdgeUse` per step of the path, in path order.
        time_gap_s: the largest ``time_gap_s`` of the live edges (0 without ``at_s``).
    """

    from_frame: str
    to_frame: str
    matrix: npt.NDArray[np.float64]
    age_s: float
    state: TransformState
    path: tuple[str, ...]
    edges: tuple[EdgeUse, ...] = ()
    time_gap_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every transform on the path is fresh and trusted."""
        return self.state is TransformState.OK

    def worst_edge(self) -> EdgeUse | None:
        """The edge that makes the state what it is (``None`` when OK)."""
        bad = [e for e in self.edges if e.state is not TransformState.OK]
        return max(bad, key=lambda e: (e.state, e.age_s, e.time_gap_s)) if bad else None


class NoPathError(LookupError):
    """No chain of transforms joins the two frames (yet).

    Attributes:
        from_frame, to_frame: the frames asked for.
        reachable: frames joined to ``from_frame`` (itself included).
    """

    def __init__(self, message: str, from_frame: str = "", to_frame: str = "",
                 reachable: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.from_frame = from_frame
        self.to_frame = to_frame
        self.reachable = reachable


@dataclass(frozen=True, eq=False)
class _Sample:
    t_s: float
    received_ns: int
    matrix: npt.NDArray[np.float64]
    valid: bool
    identity: bool


class _LiveEdge:
    """Samples of one tracked transform, oldest first (bounded)."""

    __slots__ = ("max_age_s", "name", "samples")

    def __init__(self, name: str, max_age_s: float, history: int) -> None:
        self.name = name
        self.max_age_s = max_age_s
        self.samples: deque[_Sample] = deque(maxlen=history)


@dataclass(frozen=True, eq=False)
class _StaticEdge:
    name: str
    matrix: npt.NDArray[np.float64]
    source: str


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


class TransformGraph:
    """Named rigid transforms between frames, with inverses, staleness and path queries.

    Thread-safe: every method takes one internal lock (a ``threading.Lock``), so tracker
    threads may :meth:`update` while the pipeline thread calls :meth:`query`; a query
    sees a consistent snapshot. Matrices handed out are copies.

    Args:
        default_max_age_s: age above which a live transform is ``STALE`` unless a
            per-transform threshold is given.
        clock_ns: local monotonic clock in ns (injectable for tests).
        history: samples kept per live transform (for queries at a time; at 60 Hz the
            default 256 reach about 4 s back).
    """

    def __init__(
        self,
        default_max_age_s: float = 0.2,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        history: int = 256,
    ) -> None:
        self._default_max_age_s = _check_seconds(default_max_age_s, "default_max_age_s")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an int >= 1, got {history!r}")
        self._history = history
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        # (src, dst) -> (edge, inverted): both directions share one edge object.
        self._edges: dict[tuple[str, str], tuple[_LiveEdge | _StaticEdge, bool]] = {}
        self._adjacent: dict[str, set[str]] = {}
        self._limits: dict[str, float] = {}

    def _link(self, src: str, dst: str, edge: _LiveEdge | _StaticEdge) -> None:
        # Caller holds the lock. A name given again replaces the edge (and its kind).
        self._edges[(src, dst)] = (edge, False)
        self._edges[(dst, src)] = (edge, True)
        self._adjacent.setdefault(src, set()).add(dst)
        self._adjacent.setdefault(dst, set()).add(src)

    def set_max_age(self, name: str, max_age_s: float) -> None:
        """Stale limit of one live transform (``FromToTo``), now and for later samples.

        Raises:
            TypeError, ValueError: bad name or limit.
        """
        parse_transform_name(name)
        limit = _check_seconds(max_age_s, "max_age_s")
        with self._lock:
            self._limits[name] = limit
            found = self._edges.get(parse_transform_name(name))
            if found is not None and isinstance(found[0], _LiveEdge) and not found[1]:
                found[0].max_age_s = limit

    def update(
        self,
        name: str,
        a_to_b: npt.ArrayLike,
        received_ns: int | None = None,
        *,
        valid: bool = True,
        max_age_s: float | None = None,
        timestamp_s: float | None = None,
    ) -> None:
        """Store one sample of a live (tracked) transform.

        Args:
            name: ``FromToTo`` name, e.g. ``"StylusToTracker"``.
            a_to_b: (4, 4) rigid matrix, mm.
            received_ns: local ``time.monotonic_ns()`` at reception; default now.
            valid: the sender's validity flag.
            max_age_s: staleness threshold for this transform; default the one given to
                :meth:`set_max_age`, else the graph's.
            timestamp_s: the time the sample is valid at, on the clock that
                :meth:`query`'s ``at_s`` uses (normally the sender's timestamp);
                default the local receive time in seconds.

        Raises:
            TypeError, ValueError: bad name, non-rigid / non-finite / non-4x4 matrix, bad
                threshold or time.
        """
        src, dst = parse_transform_name(name)
        if src == dst:
            raise ValueError(f"transform name {name!r} maps a frame to itself")
        limit = None if max_age_s is None else _check_seconds(max_age_s, "max_age_s")
        if received_ns is None:
            received_ns = self._clock_ns()
        elif isinstance(received_ns, bool) or not isinstance(received_ns, (int, np.integer)):
            raise TypeError(f"received_ns must be an int, got {type(received_ns).__name__}")
        if not isinstance(valid, (bool, np.bool_)):
            raise TypeError(f"valid must be a bool, got {type(valid).__name__}")
        if timestamp_s is None:
            t = int(received_ns) * 1e-9
        else:
            if isinstance(timestamp_s, bool) or not isinstance(timestamp_s, (int, float)):
                raise TypeError(f"timestamp_s must be a number, got {type(timestamp_s).__name__}")
            if not np.isfinite(timestamp_s):
                raise ValueError(f"timestamp_s must be finite, got {timestamp_s}")
            t = float(timestamp_s)
        m = validate_rigid(a_to_b, name)
        sample = _Sample(t, int(received_ns), m, bool(valid), is_identity(m))
        with self._lock:
            found = self._edges.get((src, dst))
            edge = found[0] if found is not None else None
            if not isinstance(edge, _LiveEdge) or found is None or found[1]:
                edge = _LiveEdge(name, self._limits.get(name, self._default_max_age_s),
                                 self._history)
                if found is not None:  # the reverse direction, or a static edge, replaced
                    self._unlink(src, dst)
                self._link(src, dst, edge)
            if limit is not None:
                edge.max_age_s = limit
            samples = edge.samples
            if samples and sample.t_s < samples[-1].t_s:
                # Out of order (a late packet): keep the history sorted by time.
                ordered = sorted([*samples, sample], key=lambda s: s.t_s)
                samples.clear()
                samples.extend(ordered[-self._history:])
            else:
                samples.append(sample)

    def set_static(self, name: str, a_to_b: npt.ArrayLike, source: str = "") -> None:
        """Store a static transform (a calibration result): never stale, and an identity
        matrix is accepted as such.

        Args:
            name: ``FromToTo`` name.
            a_to_b: (4, 4) rigid matrix, mm.
            source: where it comes from (a file name), named in messages.

        Raises:
            TypeError, ValueError: bad name or non-rigid matrix.
        """
        src, dst = parse_transform_name(name)
        if src == dst:
            raise ValueError(f"transform name {name!r} maps a frame to itself")
        m = validate_rigid(a_to_b, name)
        with self._lock:
            if (src, dst) in self._edges:
                self._unlink(src, dst)
            self._link(src, dst, _StaticEdge(name, m, str(source)))

    def _unlink(self, src: str, dst: str) -> None:
        del self._edges[(src, dst)]
        del self._edges[(dst, src)]
        self._adjacent[src].discard(dst)
        self._adjacent[dst].discard(src)

    def remove(self, name: str) -> None:
        """Forget a transform and its inverse (KeyError naming it if absent)."""
        src, dst = parse_transform_name(name)
        with self._lock:
            if (src, dst) not in self._edges:
                raise KeyError(f"no transform {name!r} in the graph")
            self._unlink(src, dst)

    def frames(self) -> tuple[str, ...]:
        """Every frame that has at least one transform, sorted."""
        with self._lock:
            return tuple(sorted(f for f, nb in self._adjacent.items() if nb))

    def names(self) -> tuple[str, ...]:
        """Stored transform names (each once, as given), sorted."""
        with self._lock:
            return tuple(sorted({e.name for e, _ in self._edges.values()}))

    def has(self, name: str) -> bool:
        """True when ``name`` (or its inverse) is stored."""
        src, dst = parse_transform_name(name)
        with self._lock:
            return (src, dst) in self._edges

    def reachable(self, frame: str) -> frozenset[str]:
        """Frames joined to ``frame`` by any chain of transforms (``frame`` included)."""
        f = _check_frame(frame, "frame")
        with self._lock:
            return frozenset(self._component(f))

    def _component(self, src: str) -> set[str]:
        seen = {src}
        todo = [src]
        while todo:
            for nxt in self._adjacent.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

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
        self,
        from_frame: str,
        to_frame: str | None = None,
        *,
        now_ns: int | None = None,
        at_s: float | None = None,
    ) -> TransformQuery:
        """Compose ``from_frame_to_to_frame`` along the shortest path.

        Args:
            from_frame: a frame name, or a whole ``FromToTo`` name when ``to_frame`` is
                omitted (``query("NeedleTipToCT")``).
            to_frame: destination frame.
            now_ns: the local monotonic time at which ages are judged; default now.
            at_s: the time the answer is wanted for, on the clock of the samples'
                ``timestamp_s`` (see :meth:`update`); each live edge is interpolated to
                it. Default: the newest sample of each live edge.

        Returns:
            :class:`TransformQuery` (matrix, oldest age, worst state, path, edges).

        Raises:
            TypeError, ValueError: bad frame names or time.
            NoPathError: the frames are not connected (it carries the frames reachable
                from ``from_frame``).
        """
        if to_frame is None:
            src, dst = parse_transform_name(from_frame)
        else:
            src = _check_frame(from_frame, "from_frame")
            dst = _check_frame(to_frame, "to_frame")
        if at_s is not None and (isinstance(at_s, bool) or not np.isfinite(at_s)):
            raise ValueError(f"at_s must be a finite time in seconds, got {at_s!r}")
        now = self._clock_ns() if now_ns is None else int(now_ns)
        with self._lock:
            path = self._path(src, dst)
            if path is None:
                reach = frozenset(self._component(src))
                raise NoPathError(
                    f"no path from {src!r} to {dst!r} ({src} is joined to "
                    f"{sorted(reach - {src}) or 'nothing'})", src, dst, reach)
            steps: list[tuple[_LiveEdge | _StaticEdge, bool, _Picked | None, float]] = []
            for a, b in itertools.pairwise(path):
                edge, inverted = self._edges[(a, b)]
                if isinstance(edge, _StaticEdge):
                    steps.append((edge, inverted, None, 0.0))
                else:
                    steps.append((edge, inverted, _pick(edge.samples, at_s), edge.max_age_s))
        matrix = np.eye(4)
        age_s = 0.0
        gap_s = 0.0
        state = TransformState.OK
        uses: list[EdgeUse] = []
        for edge, inverted, picked, max_age in steps:
            if isinstance(edge, _StaticEdge):
                m = edge.matrix
                uses.append(EdgeUse(edge.name, True, edge.source, TransformState.OK))
            else:
                assert picked is not None
                m, newest, gap, flags = picked
                age = (now - newest.received_ns) * 1e-9
                st = TransformState.OK
                if not flags[0]:
                    st = TransformState.INVALID
                elif flags[1]:
                    st = TransformState.IDENTITY
                elif age > max_age or gap > max_age:
                    st = TransformState.STALE
                age_s = max(age_s, age)
                gap_s = max(gap_s, gap)
                state = max(state, st)
                uses.append(EdgeUse(edge.name, False, "live", st, age, gap, max_age))
            matrix = (invert_rigid(m) if inverted else m) @ matrix
        return TransformQuery(
            from_frame=src,
            to_frame=dst,
            matrix=matrix,
            age_s=age_s,
            state=TransformState(state),
            path=tuple(path),
            edges=tuple(uses),
            time_gap_s=gap_s,
        )


_Picked = tuple[npt.NDArray[np.float64], _Sample, float, tuple[bool, bool]]


def _pick(samples: deque[_Sample], at_s: float | None) -> _Picked:
    """(matrix, newest sample, time gap, (valid, identity)) of a live edge at ``at_s``.

    Caller holds the graph's lock; ``samples`` is sorted by time and not empty. Samples
    the tracker flagged (invalid, identity) are used as they are so that their state
    shows; between two samples the worse flags of the pair count.
    """
    newest = samples[-1]
    if at_s is None or at_s >= newest.t_s:
        gap = 0.0 if at_s is None else at_s - newest.t_s
        return newest.matrix.copy(), newest, gap, (newest.valid, newest.identity)
    oldest = samples[0]
    if at_s <= oldest.t_s:
        return oldest.matrix.copy(), newest, oldest.t_s - at_s, (oldest.valid, oldest.identity)
    # Newest first: the time asked for is usually within the last few samples.
    after = newest
    for s in reversed(samples):
        if s.t_s <= at_s:
            before = s
            break
        after = s
    span = after.t_s - before.t_s
    w = 0.0 if span <= 0 else (at_s - before.t_s) / span
    flags = (before.valid and after.valid, before.identity or after.identity)
    return interpolate_rigid(before.matrix, after.matrix, w), newest, 0.0, flags
