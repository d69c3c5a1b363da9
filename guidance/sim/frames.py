"""Record types of the simulated scanner: a frame and its ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guidance.geometry import ImageVolume

__all__ = ["FLUORO_LABELS", "US_LABELS", "SimFrame", "SimTruth"]

#: Class names of the ultrasound label mask (index = class id).
US_LABELS: tuple[str, ...] = ("background", "needle", "nerve", "vessel")
#: Class names of the fluoroscopy label mask (index = class id).
FLUORO_LABELS: tuple[str, ...] = ("background", "needle", "vertebra")


@dataclass(frozen=True, eq=False)
class SimTruth:
    """Ground truth of one simulated frame.

    Attributes:
        labels: (rows, cols) uint8 class ids on the frame's pixel grid.
        label_names: class name per id (``US_LABELS`` or ``FLUORO_LABELS``).
        tip_ij: (2,) float64 (col i, row j) pixel coordinates of the needle tip in the
            frame; NaN when the tip is not in view.
        axis_ij: (2,) float64 unit vector in pixel coordinates, hub -> tip direction of
            the needle's image (NaN when the needle is seen end-on).
        tip_lps: (3,) tip position, LPS mm.
        axis_lps: (3,) unit vector, hub -> tip, LPS.
        needle_in_view: True when the tip is inside the image (and, for ultrasound,
            within the elevational slice).
    """

    labels: np.ndarray
    label_names: tuple[str, ...]
    tip_ij: np.ndarray
    axis_ij: np.ndarray
    tip_lps: np.ndarray
    axis_lps: np.ndarray
    needle_in_view: bool


@dataclass(frozen=True, eq=False)
class SimFrame:
    """One simulated frame with its tool poses and ground truth.

    Attributes:
        index: frame number.
        t_s: simulation time, s.
        image: voxels (1, rows, cols), uint8 (ultrasound) or uint16 (fluoroscopy);
            ``ijk_to_lps`` maps pixel (i=col, j=row, k=0) to LPS mm of the image plane
            (ultrasound: the scan plane; fluoroscopy: the detector plane).
        poses: tool poses (4x4 float64, ``FromToTo`` names, Reference = LPS patient).
        truth: ground truth.
    """

    index: int
    t_s: float
    image: ImageVolume
    poses: dict[str, np.ndarray]
    truth: SimTruth
