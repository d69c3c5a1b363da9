"""``guidance run``'s session from a typed request: the room's calibration files, the
plan and its structures, the pipeline configuration and the transport, put together.

The command line fills a :class:`RunRequest` from its arguments; anything else (a
service wrapper, a test) can do the same. Refusals are :class:`SessionError` or the
loaders' :class:`~guidance.io.validate.InputError` (file and key named).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from guidance.io.igtl import TransportConfig
from guidance.pipeline.config import PipelineConfig, load_config
from guidance.session.console import progress_line
from guidance.session.live import LiveSession, SessionError
from guidance.session.priority import DEFAULT_NICE, raise_priority

if TYPE_CHECKING:
    from guidance.planning.plan import Plan

__all__ = ["RunRequest", "build_run_session"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """What ``guidance run`` is asked to do.

    Attributes:
        listen: accept OpenIGTLink clients on this port (exactly one of listen/connect).
        connect: (host, port) of an OpenIGTLink server.
        bind: interface to listen on.
        config: pipeline configuration file (JSON; None: defaults).
        modality: modality of every frame ("": each frame's IGTLv3 metadata).
        calibration: calibration files (``guidance calibrate ... --out``).
        plan: ``plan.json`` from ``guidance plan`` (None: no plan).
        target_px: ultrasound target as a (column, row) pixel of the frames, or None.
        out_dir: annotated PNGs and ``summary.json`` go here (None: nowhere).
        record: every received message is recorded into this file (None: not).
        transport: transport settings (cap, CRC, timeouts, connections, allow list).
        nice: CPU priority of the live threads (:mod:`guidance.session.priority`; 0:
            normal).
    """

    listen: int | None = None
    connect: tuple[str, int] | None = None
    bind: str = "127.0.0.1"
    config: Path | None = None
    modality: str = ""
    calibration: tuple[Path, ...] = ()
    plan: str | None = None
    target_px: tuple[float, float] | None = None
    out_dir: Path | None = None
    record: Path | None = None
    transport: TransportConfig = field(default_factory=TransportConfig)
    nice: int = DEFAULT_NICE


def build_run_session(req: RunRequest, say: Callable[[str], None]) -> LiveSession:
    """Build and start the session of ``req``; ``say`` gets one line per thing set up
    (calibrations, plan, target).

    The planning CT is then read in the background for the picture of navigation from
    poses alone (seconds for a DICOM series); until then, and if that fails (logged),
    pose updates have no picture: their outputs never wait for it.

    Raises:
        SessionError: connection options that contradict each other, a port that cannot
            be listened on, an output folder that cannot be written.
        guidance.io.validate.InputError: a bad configuration, calibration or plan file
            (named, with the key).
    """
    from guidance.navigation.setup import load_room
    from guidance.planning.plan import Plan
    from guidance.planning.provenance import load_plan_structures

    if req.connect is not None and (req.transport.allow or req.transport.max_connections != 16):
        raise SessionError("--allow and --max-connections apply to --listen, not --connect")
    config = load_config(req.config) if req.config else PipelineConfig()
    say(raise_priority(req.nice))  # before any of the session's threads exist
    if req.modality:
        config = dataclasses.replace(
            config, ingest=dataclasses.replace(config.ingest, modality=req.modality))
    room = load_room(list(req.calibration))
    for line in room.describe():
        say(f"calibration: {line}")
    plan = structures = None
    if req.plan:
        plan = Plan.load(req.plan)
        structures = load_plan_structures(plan, req.plan, progress=progress_line("plan anatomy"))
        say(f"plan: {req.plan} ({len(structures.structures)} structures checked live)")
    session = LiveSession(listen=req.listen, connect=req.connect, config=config,
                          out_dir=req.out_dir, record=req.record, transport=req.transport,
                          bind=req.bind, room=room)
    if plan is not None:
        session.pipeline.set_plan(plan, structures)
    if req.target_px is not None:
        session.pipeline.set_image_target_px(*req.target_px)
        say(f"target: pixel ({req.target_px[0]:g}, {req.target_px[1]:g}) of the "
            "ultrasound frames")
    session.start()
    if plan is not None and req.plan:
        _load_navigation_ct(session, plan, req.plan)
    return session


def _load_navigation_ct(session: LiveSession, plan: Plan, plan_path: str) -> None:
    from guidance.planning.plan import PlanError
    from guidance.planning.provenance import load_plan_ct

    def load() -> None:
        try:
            session.pipeline.set_navigation_ct(load_plan_ct(plan, plan_path))
        except PlanError as e:
            log.warning("no navigation picture: %s", e)

    threading.Thread(target=load, name="navigation-ct", daemon=True).start()
