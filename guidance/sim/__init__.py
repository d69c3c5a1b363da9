"""Simulated scanner: ultrasound and fluoroscopy frames with tool poses and ground truth.

``make_scanner("us" | "fluoro", size=, seed=, params=)`` gives a pure frame generator;
``frame(index, t_s)`` returns a :class:`SimFrame` (image as an ImageVolume in LPS,
tool poses, :class:`SimTruth`). :func:`sample_params` draws parameters for domain
randomisation. Transport and pacing live elsewhere (the ``guidance simulate`` CLI).
"""

from guidance.sim.bench import bench_sim
from guidance.sim.frames import FLUORO_LABELS, US_LABELS, SimFrame, SimTruth
from guidance.sim.needle_path import NeedlePath, NeedleState, needle_pose
from guidance.sim.params import FluoroParams, NeedleParams, UltrasoundParams, sample_params
from guidance.sim.scanner import MODALITIES, Scanner, make_scanner

ScannerParams = UltrasoundParams | FluoroParams

__all__ = [
    "FLUORO_LABELS",
    "MODALITIES",
    "US_LABELS",
    "FluoroParams",
    "NeedleParams",
    "NeedlePath",
    "NeedleState",
    "Scanner",
    "ScannerParams",
    "SimFrame",
    "SimTruth",
    "UltrasoundParams",
    "bench_sim",
    "make_scanner",
    "needle_pose",
    "sample_params",
]
