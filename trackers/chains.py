"""The transform chains of a procedure room, and which link is missing when one breaks.

The transform graph finds *a* path between two frames; when there is none, the people
in the room need to know *which* transform is missing and what makes it (a calibration
command, a tracked tool the tracker is not sending, a registration). A :class:`Chain`
lists the frames of a path in stages (alternatives within a stage: the needle may be
tracked relative to the patient ``Reference`` or to the ``Tracker``) and the link between
consecutive stages. :func:`missing_link` finds the furthest stage the start frame
reaches and names the next link.

Frames (PLUS names, DESIGN.md): ``Tracker`` (camera / field generator), ``Reference``
(marker fixed to the patient), ``Needle`` (the needle's marker), ``NeedleTip`` (tip at
the origin, +z from hub to tip), ``Probe`` (ultrasound probe marker), ``Image`` (pixel
grid in mm), ``CT`` (the planning CT's LPS patient frame, the frame of plan.json).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trackers.transform_graph import FRAME_PATTERN, parse_transform_name

__all__ = [
    "NEEDLE_TIP_TO_CT",
    "Chain",
    "Link",
    "MissingLink",
    "frame_to_ct_chain",
    "missing_link",
]


@dataclass(frozen=True)
class Link:
    """The transform between two stages of a chain.

    Attributes:
        names: ``FromToTo`` names that make it (alternatives, preferred first).
        kind: ``calibration``, ``registration`` or ``live`` (a tracked pose).
        how: what makes it, for the message (a command, or what the tracker must send).
    """

    names: tuple[str, ...]
    kind: str
    how: str

    def __post_init__(self) -> None:
        for n in self.names:
            parse_transform_name(n)
        if self.kind not in ("calibration", "registration", "live"):
            raise ValueError(f"kind must be calibration, registration or live, got {self.kind!r}")


@dataclass(frozen=True)
class Chain:
    """Stages of frames from a start frame to an end frame and the links between them.

    Attributes:
        name: what the chain gives (``needle tip``), for messages.
        stages: frames per stage; the first stage holds the start frame, the last the
            end frame.
        links: ``len(stages) - 1`` links, ``links[k]`` joins stage k to stage k + 1.
    """

    name: str
    stages: tuple[tuple[str, ...], ...]
    links: tuple[Link, ...]

    def __post_init__(self) -> None:
        if len(self.stages) < 2 or len(self.links) != len(self.stages) - 1:
            raise ValueError(f"chain {self.name!r}: needs N >= 2 stages and N - 1 links")
        for stage in self.stages:
            if not stage or not all(FRAME_PATTERN.fullmatch(f) for f in stage):
                raise ValueError(f"chain {self.name!r}: bad stage {stage!r}")

    @property
    def start(self) -> str:
        return self.stages[0][0]

    @property
    def end(self) -> str:
        return self.stages[-1][0]


@dataclass(frozen=True)
class MissingLink:
    """The first link a chain lacks.

    Attributes:
        chain: the chain's name.
        start, end: the frames the chain joins.
        link: the missing link.
        reached: the frames of the furthest stage reached.
    """

    chain: str
    start: str
    end: str
    link: Link
    reached: tuple[str, ...]

    @property
    def message(self) -> str:
        """One line: what is missing and what makes it."""
        names = " or ".join(self.link.names)
        what = {"live": "no live pose", "calibration": "no calibration",
                "registration": "no registration"}[self.link.kind]
        return (f"no {self.chain} ({self.start} -> {self.end}): missing {names} "
                f"({what}; {self.link.how})")


_PIVOT = Link(("NeedleTipToNeedle",), "calibration",
              "make it with `guidance calibrate pivot --tool Needle --input POSES.json "
              "--out pivot.json` and give `--calibration pivot.json`")
_NEEDLE_POSE = Link(("NeedleToReference", "NeedleToTracker"), "live",
                    "the tracker must send the needle marker's pose")
_REGISTRATION = Link(("ReferenceToCT", "TrackerToCT"), "registration",
                     "make it with `guidance calibrate register --name ReferenceToCT "
                     "--input FIDUCIALS.json --out reg.json` and give "
                     "`--calibration reg.json`")
_PROBE_CAL = Link(("ImageToProbe",), "calibration",
                  "make it with `guidance calibrate probe --input OBSERVATIONS.json "
                  "--out probe.json` and give `--calibration probe.json`")
_PROBE_POSE = Link(("ProbeToReference", "ProbeToTracker"), "live",
                   "the tracker must send the probe marker's pose")

#: NeedleTip -> Needle (pivot) -> Reference or Tracker (tracker) -> CT (registration).
#: A tracker that holds the calibration (PLUS) may send ``NeedleTipToReference`` itself:
#: the chain then starts at the third stage.
NEEDLE_TIP_TO_CT = Chain(
    "needle tip",
    (("NeedleTip",), ("Needle",), ("Reference", "Tracker"), ("CT",)),
    (_PIVOT, _NEEDLE_POSE, _REGISTRATION),
)


def frame_to_ct_chain(frame: str) -> Chain:
    """The chain that places an image given in ``frame`` (the suffix of its device name,
    ``Image_Reference`` -> ``Reference``) in the planning CT."""
    if not isinstance(frame, str) or not FRAME_PATTERN.fullmatch(frame):
        raise ValueError(f"frame must match [A-Z][A-Za-z0-9]*, got {frame!r}")
    if frame == "CT":
        return Chain("image placement", (("CT",), ("CT",)),
                     (Link(("CTToCT",), "registration", "none needed"),))
    if frame == "Image":
        return Chain("image placement",
                     (("Image",), ("Probe",), ("Reference", "Tracker"), ("CT",)),
                     (_PROBE_CAL, _PROBE_POSE, _REGISTRATION))
    if frame in ("Reference", "Tracker"):
        return Chain("image placement", ((frame,), ("CT",)), (_REGISTRATION,))
    return Chain("image placement", ((frame,), ("CT",)), (
        Link((f"{frame}ToCT",), "registration",
             f"register frame {frame} to the planning CT (`guidance calibrate register "
             f"--name {frame}ToCT ...`) or send the images in a known frame "
             "(device name IMAGE_Reference)"),))


def missing_link(reachable: Iterable[str], chain: Chain) -> MissingLink | None:
    """The link that stops ``chain``, given the frames joined to its start frame.

    Args:
        reachable: frames joined to ``chain.start`` (``TransformGraph.reachable`` or
            ``NoPathError.reachable``).
        chain: the chain.

    Returns:
        ``None`` when the end frame is reachable, else the link after the furthest
        stage reached.
    """
    frames = set(reachable) | {chain.start}
    furthest = 0
    for k, stage in enumerate(chain.stages):
        if frames.intersection(stage):
            furthest = k
    if furthest == len(chain.stages) - 1:
        return None
    reached = tuple(f for f in chain.stages[furthest] if f in frames)
    return MissingLink(chain.name, chain.start, chain.end, chain.links[furthest], reached)
