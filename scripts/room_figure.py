"""Draw docs/room-frames.png: the frames of a procedure room and the transforms that join
them, each labelled with what makes it (the README's picture of the room workflow).

    python scripts/room_figure.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

FRAMES = {  # name: (x, y, note)
    "NeedleTip": (0.0, 3.0, "tip at the origin,\n+z hub -> tip"),
    "Needle": (0.0, 1.5, "the needle's marker"),
    "Reference": (3.2, 1.5, "marker fixed\nto the patient"),
    "Tracker": (3.2, 3.0, "camera /\nfield generator"),
    "CT": (6.4, 1.5, "planning CT, LPS mm:\nthe frame of plan.json"),
    "Probe": (3.2, 0.0, "ultrasound probe's\nmarker"),
    "Image": (0.0, 0.0, "pixels in mm\n(Image_Image)"),
    "CArm": (6.4, 3.0, "X-ray source,\nz to the detector"),
}
EDGES = [  # from, to, label, kind
    ("NeedleTip", "Needle", "NeedleTipToNeedle\ncalibrate pivot", "static"),
    ("Needle", "Reference", "NeedleToReference\ntracker, live", "live"),
    ("Reference", "CT", "ReferenceToCT\ncalibrate register", "static"),
    ("Image", "Probe", "ImageToProbe\ncalibrate probe", "static"),
    ("Probe", "Reference", "ProbeToReference\ntracker, live", "live"),
    ("Reference", "Tracker", "ReferenceToTracker\n(live, optional)", "live"),
    ("Reference", "CArm", "ReferenceToCArm\ncalibrate carm", "static"),
]
COLOURS = {"static": "#1f6fb4", "live": "#d2691e"}


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 5.6), dpi=110)
    ax.set_xlim(-1.2, 7.8)
    ax.set_ylim(-0.9, 3.9)
    ax.axis("off")
    for a, b, label, kind in EDGES:
        (xa, ya, _), (xb, yb, _) = FRAMES[a], FRAMES[b]
        vertical = abs(xa - xb) < 1e-6
        horizontal = abs(ya - yb) < 1e-6
        # Shrink to the boxes' borders, in points (88 pt per x unit, 84 per y unit).
        shrink = 34 if vertical else 66 if horizontal else 40
        ax.add_patch(FancyArrowPatch((xa, ya), (xb, yb), arrowstyle="-|>", mutation_scale=20,
                                     lw=2.2, color=COLOURS[kind], shrinkA=shrink,
                                     shrinkB=shrink,
                                     linestyle="-" if kind == "static" else "--"))
        t = 0.5
        ax.text(xa + t * (xb - xa) + (0.12 if vertical else 0.0), ya + t * (yb - ya) + 0.05,
                label, ha="left" if vertical else "center", va="center", fontsize=8.5,
                color=COLOURS[kind],
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9})
    for name, (x, y, note) in FRAMES.items():
        ax.add_patch(FancyBboxPatch((x - 0.7, y - 0.36), 1.4, 0.72,
                                    boxstyle="round,pad=0.05", fc="#f4f4f4", ec="#333333"))
        ax.text(x, y + 0.18, name, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(x, y - 0.12, note, ha="center", va="center", fontsize=7.5, color="#444444")
    ax.text(-1.1, 3.75, "The needle tip in the planning CT: NeedleTip -> Needle -> Reference "
            "-> CT (one path in the session's transform graph)", fontsize=10, weight="bold")
    ax.text(-1.1, -0.85, "solid: a calibration file (guidance run --calibration FILE, static)"
            "    dashed: a tracked pose over OpenIGTLink (live, interpolated to each frame's "
            "time)", fontsize=8.5, color="#333333")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/room-frames.png"))
