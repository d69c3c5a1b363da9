"""Simulated scanner: ultrasound and fluoroscopy frames with tool poses and ground truth.

``make_scanner("us" | "fluoro", size=, seed=, params=)`` gives a pure frame generator;
``frame(index, t_s)`` returns a :class:`SimFrame` (image as an ImageVolume in LPS,
tool poses, :class:`SimTruth`). :func:`sample_params` draws parameters for domain
randomisation. :mod:`guidance.sim.ct_slices` makes CT slices with a needle (training
and held-out ranges). Transport and pacing live elsewhere (the ``guidance simulate`` CLI).
"""

from guidance.sim.bench import bench_sim
from guidance.sim.ct_slice_params import CtSliceParams
from guidance.sim.ct_slices import (
    CT_LABELS,
    CtSliceFrame,
    CtSliceGenerator,
    CtSliceSimulator,
    ct_slice_frames,
)
from guidance.sim.frames import FLUORO_LABELS, US_LABELS, SimFrame, SimTruth
from guidance.sim.needle_path import NeedlePath, NeedleState, needle_pose
from guidance.sim.params import FluoroParams, NeedleParams, UltrasoundParams, sample_params
from guidance.sim.scanner import MODALITIES, Scanner, make_scanner

ScannerParams = UltrasoundParams | FluoroParams

__all__ = [
    "CT_LABELS",
    "FLUORO_LABELS",
    "MODALITIES",
    "US_LABELS",
    "CtSliceFrame",
    "CtSliceGenerator",
    "CtSliceParams",
    "CtSliceSimulator",
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
    "ct_slice_frames",
    "make_scanner",
    "needle_pose",
    "sample_params",
]
