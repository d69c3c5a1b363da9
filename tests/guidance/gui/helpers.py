"""Simulated streams for the GUI tests: synthetic in-plane frames through the real
pipeline (no network), and pixel checks on grabbed images."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
from PyQt5.QtGui import QColor, QImage

from guidance.geometry import ImageVolume
from guidance.io.messages import image_message_from_volume
from guidance.io.slots import LatestSlots
from guidance.navigation.setup import static_room
from guidance.pipeline.config import IngestConfig, PipelineConfig, SegmentConfig
from guidance.pipeline.loop import Pipeline

#: The synthetic frames are sent in the Reference frame, which these tests take as the
#: planning CT (a static ReferenceToCT identity, declared here, not a calibration file).
REFERENCE_IS_CT = static_room({"ReferenceToCT": np.eye(4)}, "test: reference = CT")

SPACING_MM = 0.2
#: The needle in the synthetic frames, pixels (col, row): hub and tip.
HUB_IJ = (10, 20)
TIP_IJ = (150, 130)


def frame_msg(seed: int = 0, size: int = 256):
    """An 8-bit in-plane frame (plane z = 0, LPS, 0.2 mm pixels) with a bright needle."""
    img = np.random.default_rng(seed).rayleigh(30, (size, size)).clip(0, 255).astype(np.uint8)
    cv2.line(img, HUB_IJ, TIP_IJ, 230, 2)
    vol = ImageVolume(img[None], np.diag([SPACING_MM, SPACING_MM, 1.0, 1.0]))
    return image_message_from_volume(vol, "Image_Reference", time.time(), "lps")


def px_to_lps(ij: tuple[float, float]) -> np.ndarray:
    return np.array([ij[0] * SPACING_MM, ij[1] * SPACING_MM, 0.0])


def make_pipeline(stale_after_s: float = 0.3) -> tuple[Pipeline, LatestSlots]:
    """The real pipeline with the classical needle detector: the painted needle of
    :func:`frame_msg` is a plain bright line on Rayleigh noise, not an ultrasound needle
    (no reverberations), which the shipped ultrasound model, trained on simulated
    needles, does not take for one."""
    slots = LatestSlots()
    cfg = PipelineConfig(ingest=IngestConfig(stale_after_s=stale_after_s, modality="us"),
                         segment=SegmentConfig(model="none"))
    return Pipeline(slots, cfg, room=REFERENCE_IS_CT), slots


class Feeder:
    """Puts frames into the slots at ``fps`` from its own thread until stopped."""

    def __init__(self, slots: LatestSlots, fps: float = 30.0) -> None:
        self.slots = slots
        self.period = 1.0 / fps
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            m = frame_msg(self.sent % 4)
            self.slots.put(m.device_name, "IMAGE", m, m.timestamp, time.monotonic_ns(), "test")
            self.sent += 1
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def to_array(img: QImage) -> np.ndarray:
    """(h, w, 3) uint8 RGB copy of a QImage."""
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    ptr = img.constBits()
    ptr.setsize(img.bytesPerLine() * h)
    arr = np.frombuffer(ptr, np.uint8).reshape(h, img.bytesPerLine())[:, : w * 3]
    return arr.reshape(h, w, 3).copy()


def colour_fraction(rgb: np.ndarray, colour: QColor, tol: int = 12) -> float:
    """Fraction of pixels within ``tol`` (per channel) of ``colour``."""
    target = np.array([colour.red(), colour.green(), colour.blue()])
    return float(np.all(np.abs(rgb.astype(int) - target) <= tol, axis=-1).mean())
