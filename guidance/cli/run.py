"""``guidance run``: the live loop on an OpenIGTLink stream (headless)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from guidance.cli.common import (
    host_port,
    int_at_least,
    path_arg,
    pixel_point,
    port_number,
    positive_float,
    start_gui_or_fail,
)
from guidance.io.igtl import TransportConfig
from guidance.records import MODALITIES
from guidance.session import SessionError
from guidance.session.build import RunRequest, build_run_session
from guidance.session.console import summary_lines, transport_lines
from guidance.session.priority import DEFAULT_NICE
from guidance.session.signals import StopSignals, wait_or_interrupt

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the live guidance loop on an OpenIGTLink stream",
                       description="Run the live loop: receive frames and tool poses over "
                       "OpenIGTLink, segment, track, check against the plan, send results back.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--listen", type=port_number, metavar="PORT",
                     help="accept OpenIGTLink clients on this port")
    src.add_argument("--connect", type=host_port, metavar="HOST:PORT",
                     help="connect to an OpenIGTLink server (reconnects with backoff)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="interface to listen on (default loopback only)")
    gui = p.add_mutually_exclusive_group()
    gui.add_argument("--headless", action="store_true", help="no GUI (the default)")
    gui.add_argument("--gui", action="store_true",
                     help="show the live view (PyQt5) on this machine's screen")
    p.add_argument("--screenshot", type=path_arg("output_file", Path), metavar="FILE",
                   help="with --gui: draw offscreen, save a PNG after --seconds (default 5) "
                        "and stop")
    p.add_argument("--sound", action="store_true", help="with --gui: beep on DANGER")
    p.add_argument("--out", type=path_arg("output_dir", Path), metavar="DIR",
                   help="write annotated PNGs and summary.json")
    p.add_argument("--record", type=path_arg("output_file", Path), metavar="FILE",
                   help="record every received message")
    p.add_argument("--config", type=path_arg("input_file", Path), metavar="FILE",
                   help="pipeline configuration (JSON)")
    p.add_argument("--plan", type=path_arg("input_file"), metavar="FILE",
                   help="plan.json from `guidance plan`: its CT and labels are checked "
                        "(hash) and its structures checked live")
    p.add_argument("--calibration", type=path_arg("input_file", Path), metavar="FILE",
                   action="append", default=[],
                   help="a calibration file (guidance calibrate ... --out), repeatable: "
                        "pivot (NeedleTipToNeedle), register (ReferenceToCT), probe, "
                        "temporal, carm")
    p.add_argument("--modality", choices=MODALITIES,
                   help="modality of every frame (default: each frame's IGTLv3 metadata "
                        "'Modality'; a frame without it is refused)")
    p.add_argument("--target-px", type=pixel_point, metavar="U,V",
                   help="ultrasound: the target as a pixel of the incoming frames (U column, "
                        "V row); the tip-to-target is then measured in the image plane (also "
                        "set by a click in the live view, --gui)")
    p.add_argument("--seconds", type=positive_float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--no-crc", action="store_true", help="do not verify message CRCs")
    p.add_argument("--max-body-mb", type=positive_float, default=256.0,
                   help="largest accepted message body, MiB (default 256); memory follows "
                        "the bytes that arrive, not the size a header declares")
    p.add_argument("--message-timeout", type=positive_float, default=10.0, metavar="S",
                   help="a whole message must arrive within this many seconds from its "
                        "first byte, else its connection is closed (default 10)")
    p.add_argument("--max-connections", type=int_at_least(1), default=16, metavar="N",
                   help="with --listen: connections open at once; more are refused and "
                        "logged (default 16)")
    p.add_argument("--allow", type=allow_list, metavar="HOST[,HOST]",
                   help="with --listen: accept only these peers (IP, network such as "
                        "10.0.0.0/24, or host name; default: any peer that reaches the "
                        "port -- see --bind)")
    p.add_argument("--nice", type=int, choices=range(-20, 20), default=DEFAULT_NICE,
                   metavar="N", help="CPU priority of the live threads, -20..19 (lower runs "
                                     "first; below 0 needs root or CAP_SYS_NICE, else it is "
                                     "said and the priority stays)")
    p.set_defaults(func=run)


def allow_list(text: str) -> tuple[Any, ...]:
    """``--allow`` as networks (argparse type)."""
    from guidance.io.igtl import parse_allow_list

    try:
        return parse_allow_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    start_gui_or_fail(args, require_png=True)  # before anything starts
    transport = TransportConfig(max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                                check_crc=not args.no_crc,
                                message_timeout_s=args.message_timeout,
                                max_connections=args.max_connections,
                                allow=args.allow or ())
    req = RunRequest(listen=args.listen, connect=args.connect, bind=args.bind,
                     config=args.config, modality=args.modality or "",
                     calibration=tuple(args.calibration), plan=args.plan,
                     target_px=args.target_px, out_dir=args.out, record=args.record,
                     transport=transport, nice=args.nice)
    session = build_run_session(req, say=print)
    where = (f"listening on {args.bind}:{session.port}" if args.listen is not None
             else f"connecting to {args.connect[0]}:{args.connect[1]}")
    if args.gui:
        from guidance.gui.launch import live_view

        try:  # until the window closes (Ctrl-C closes it too)
            path = live_view(session, seconds=args.seconds, screenshot=args.screenshot,
                             sound=args.sound, out_dir=args.out or Path("."),
                             ctrl_c_closes=True)
        except SessionError:
            session.stop()
            raise
        if path:
            print(f"screenshot: {path}")
    else:
        stop = threading.Event()
        signals = StopSignals(stop)
        try:
            print(f"guidance run: {where}; Ctrl-C or SIGTERM to stop", flush=True)
            wait_or_interrupt(args.seconds, stop)
        finally:
            signals.restore()
        if signals.received:
            print(f"guidance run: stopped by {signals.received}", flush=True)
    summary = session.stop()
    for line in [*summary_lines(summary, "guidance run"),
                 *transport_lines(summary.get("transport", {}))]:
        print(line)
    return 0

