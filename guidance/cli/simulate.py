"""``guidance simulate``: a simulated scanner, or a whole simulated room (``--tracked``).

Without ``--tracked``: frames (IMAGE ``Image_Reference``) and the simulator's tool poses
(``NeedleTipToReference``: the tip itself) in the planning CT's frame; ``guidance run``
then needs a ``ReferenceToCT`` (identity) to use them. With ``--tracked``: the room of
:mod:`guidance.sim.room` -- a tracker sending the needle *marker's* pose
(``NeedleToReference``, 150+ mm from the tip, with jitter) at its own rate, a patient
reference that is not the CT (registration needed), frames that lag behind their
timestamps, each stream on its own connection -- and, with ``--write-inputs DIR``, the
raw inputs of ``guidance calibrate`` (pivot, spin, fiducials, temporal; probe or C-arm).

Ultrasound (``--modality us``) plays an in-plane nerve block at a real block's pace
(:mod:`guidance.sim.us_scenario`, ``--scenario``): the needle enters the image about half
a second in and advances at 1-3 mm/s with pauses toward a target beside the nerve (or
``--target-px U,V``), then is held there.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from guidance.cli.common import (
    host_port,
    path_arg,
    pixel_point,
    port_number,
    positive_float,
)
from guidance.records import MODALITIES
from guidance.session.signals import StopSignals

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    from guidance.sim.scenario import SCENARIOS

    p = sub.add_parser("simulate", help="stream a simulated scanner, or a simulated room",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=(*MODALITIES, "none"), default="us",
                   help="frames to stream (none: tracked poses only, with --tracked; ct: "
                   "control slabs of a CT-guided procedure, one per step)")
    p.add_argument("--fps", type=positive_float, default=15.0,
                   help="frames per second streamed (Hz)")
    p.add_argument("--size", type=int, default=256, help="frame size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated scene (the same seed, the same frames)")
    p.add_argument("--seconds", type=positive_float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--scenario", choices=SCENARIOS,
                   help="--modality us: the needle's story at a real block's pace (default "
                   "safe): safe reaches the target beside the nerve; drift turns toward the "
                   "nerve (the vessel beyond it on the path ahead), is withdrawn and "
                   "redirected; breach ends with the tip inside the nerve")
    p.add_argument("--target-px", type=pixel_point, metavar="U,V",
                   help="--modality us: the target as a pixel of the frames (U column, V row; "
                   "default: beside the nerve)")
    ct = p.add_argument_group("--modality ct: control scans (slabs) along a plan")
    ct.add_argument("--ct-steps", type=int, default=6, help="control scans (default 6)")
    ct.add_argument("--ct-interval-s", type=float, default=2.0,
                    help="seconds between scans (default 2.0)")
    ct.add_argument("--ct-slices", type=int, default=5, help="slices per slab (default 5)")
    ct.add_argument("--ct-thickness-mm", type=positive_float, default=3.0,
                    help="slice thickness = spacing, mm (default 3)")
    ct.add_argument("--ct-motion-mm", type=float, default=0.0,
                    help="patient translation toward +L from the 3rd scan on, mm (default 0)")
    dst = p.add_mutually_exclusive_group()
    dst.add_argument("--listen", type=port_number, metavar="PORT",
                     help="serve OpenIGTLink on this TCP port (the guidance connects)")
    dst.add_argument("--connect", type=host_port, metavar="HOST:PORT",
                     help="connect to a listening guidance (guidance run --listen PORT)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address --listen binds to (loopback unless given)")
    room = p.add_argument_group("--tracked: a simulated procedure room")
    room.add_argument("--tracked", action="store_true",
                      help="stream the room: marker poses, reference != CT, lagging frames")
    room.add_argument("--write-inputs", type=path_arg("output_dir", Path), metavar="DIR",
                      help="write the calibration inputs (pivot.json, spin.json, "
                           "fiducials.json, temporal.json; probe.json or carm.json) first")
    room.add_argument("--plan", type=path_arg("input_file"), metavar="FILE",
                      help="the needle follows this plan.json (modality none or fluoro)")
    room.add_argument("--speed-mm-s", type=positive_float, default=10.0,
                      help="needle speed with --plan or --modality none (default 10)")
    room.add_argument("--lag-s", type=float, default=0.08,
                      help="frames show the room this long before their timestamp (0.08)")
    room.add_argument("--pose-hz", type=positive_float, default=60.0,
                      help="tracker rate, Hz (default 60)")
    room.add_argument("--tip-length-mm", type=positive_float, default=160.0,
                      help="needle marker to tip, mm (default 160)")
    room.add_argument("--marker-lateral-mm", type=float, default=0.0,
                      help="marker origin off the shaft's line, mm (needs a spin calibration)")
    room.add_argument("--relative-to", choices=("Reference", "Tracker"), default="Reference",
                      help="poses as NeedleToReference (PLUS) or NeedleToTracker + "
                           "ReferenceToTracker")
    room.add_argument("--start-s", type=float, default=0.0,
                      help="simulation time of the first pose (default 0)")
    p.set_defaults(func=run)



def run(args: argparse.Namespace) -> int:
    from guidance.scenarios import options_from
    from guidance.scenarios.simulate import SimulateOptions, simulate

    simulate(options_from(SimulateOptions, args), functools.partial(print, flush=True),
             lambda stop: StopSignals(stop).restore)
    return 0
