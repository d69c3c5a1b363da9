"""Navigation in the procedure room: the calibration files as static edges of the
session's transform graph, the tracked poses as live edges, and the queries that place
the needle tip and the frames in the planning CT (DESIGN.md, the transform chain)."""

from guidance.navigation.navigator import POSE_TYPES, Navigator, TrackedTip, frame_of_device
from guidance.navigation.setup import (
    CArmIntrinsics,
    EdgeUncertainty,
    RoomSetup,
    RoomSetupError,
    load_room,
    room_setup,
    static_room,
)

__all__ = [
    "POSE_TYPES",
    "CArmIntrinsics",
    "EdgeUncertainty",
    "Navigator",
    "RoomSetup",
    "RoomSetupError",
    "TrackedTip",
    "frame_of_device",
    "load_room",
    "room_setup",
    "static_room",
]
