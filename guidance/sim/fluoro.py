"""Simulated C-arm fluoroscopy of the real CT with a steel needle and quantum noise.

Physics: primary counts I = I0 * exp(-(P_anatomy + P_needle)) plus a uniform scatter
term, with Poisson noise (normal approximation above 30 counts, exact below), then
log-inverted (``log(I0 / I)``), edge-enhanced (unsharp mask) and windowed into a 16-bit
display image like a fluoroscope's output. ``P_anatomy`` is the line integral of mu(HU)
through the real CT, projected once per C-arm pose and cached; ``P_needle`` is the
needle's analytic chord through a solid steel cylinder, computed per frame inside its
bounding box only.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.sim.anatomy import disc_approach, hu_to_mu, vertebra_mask_volume
from guidance.sim.frames import FLUORO_LABELS, SimFrame, SimTruth
from guidance.sim.needle_path import NeedlePath, needle_pose, random_perpendicular
from guidance.sim.params import FluoroParams
from guidance.sim.projector import CArmGeometry, carm_geometry, needle_chord_mm, project_volume

__all__ = ["FluoroScanner", "anatomy_projection", "display_window"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

#: A ray crossing more than this much vertebra (mm) is labelled vertebra.
_VERTEBRA_CHORD_MM = 2.0
#: A ray crossing more than this much needle (mm) is labelled needle.
_NEEDLE_CHORD_MM = 0.05


@dataclass(frozen=True, eq=False)
class AnatomyProjection:
    """Cached projection of the CT for one C-arm pose.

    Attributes:
        attenuation: (size, size) float32 line integral of mu (dimensionless).
        vertebra: (size, size) bool, rays crossing > 2 mm of vertebra.
    """

    attenuation: npt.NDArray[np.float32]
    vertebra: npt.NDArray[np.bool_]


def display_window(attenuation: npt.NDArray[np.float32], i0_photons: float,
                   scatter_fraction: float) -> tuple[float, float]:
    """The display window on measured ``log(I0/I)``, as a fluoroscope's automatic
    brightness control sets it: from the central half of the field of the expected
    (noise-free, needle-free) image *with* scatter. Scatter lifts every pixel's counts,
    so with air in the field the measured log attenuation tops out far below the
    scatter-free line integral; a window from the anatomy alone then leaves the whole
    picture below it (a black frame, or white when inverted).

    Args:
        attenuation: (size, size) anatomy line integral of mu (dimensionless).
        i0_photons: unattenuated counts per pixel.
        scatter_fraction: scatter as a fraction of the mean primary counts.

    Returns:
        (lo, hi) with hi - lo >= 0.5.
    """
    primary = np.float32(i0_photons) * np.exp(-attenuation)
    expected = primary + np.float32(scatter_fraction) * np.float32(primary.mean())
    measured = np.log(np.float32(i0_photons) / expected)
    q = measured.shape[0] // 4
    centre = measured[q:-q, q:-q] if q > 0 else measured
    lo, hi = (float(v) for v in np.percentile(centre, [1.0, 99.9]))
    lo = lo - 0.15 * (hi - lo)
    return lo, max(hi, lo + 0.5)


@functools.lru_cache(maxsize=2)
def _mu_and_vertebra(mu_water_per_mm: float, bone_contrast: float) -> tuple[np.ndarray, F64]:
    from guidance.data import load_real_ct

    ct = load_real_ct()
    vert = vertebra_mask_volume()
    vol = np.empty((*ct.voxels.shape, 2), dtype=np.float32)
    vol[..., 0] = hu_to_mu(ct.voxels, mu_water_per_mm, bone_contrast)
    vol[..., 1] = vert.voxels
    return vol, ct.ijk_to_lps


def _geometry_key(g: CArmGeometry) -> tuple[object, ...]:
    return (tuple(np.round(g.carm_to_lps, 9).ravel()), g.sod_mm, g.sdd_mm, g.pixel_mm, g.size)


_PROJECTION_CACHE: dict[tuple[object, ...], AnatomyProjection] = {}


def anatomy_projection(
    geometry: CArmGeometry, mu_water_per_mm: float, bone_contrast: float
) -> AnatomyProjection:
    """Project the real CT (attenuation and vertebra mask) for a C-arm pose; cached."""
    key = (*_geometry_key(geometry), mu_water_per_mm, bone_contrast)
    hit = _PROJECTION_CACHE.get(key)
    if hit is not None:
        return hit
    vol, ijk_to_lps = _mu_and_vertebra(mu_water_per_mm, bone_contrast)
    proj = project_volume(vol, ijk_to_lps, geometry)
    att = np.ascontiguousarray(proj[..., 0])
    result = AnatomyProjection(attenuation=att, vertebra=proj[..., 1] > _VERTEBRA_CHORD_MM)
    if len(_PROJECTION_CACHE) >= 8:
        _PROJECTION_CACHE.pop(next(iter(_PROJECTION_CACHE)))
    _PROJECTION_CACHE[key] = result
    return result


class FluoroScanner:
    """Fluoroscopy frames of the real CT with a needle on a disc approach.

    Attributes:
        modality: ``"fluoro"``.
        params: the parameters.
        size: detector pixels per side.
        seed: noise and drift seed.
        geometry: the C-arm pose.
        path: the needle's planned path and motion.
        entry_lps, target_lps: (3,) planned path, LPS mm.
    """

    modality = "fluoro"

    def __init__(self, params: FluoroParams, size: int, seed: int) -> None:
        if not isinstance(params, FluoroParams):
            raise TypeError(f"params must be FluoroParams, got {type(params).__name__}")
        self.params = params
        self.size = int(size)
        self.seed = int(seed)
        plan = disc_approach(
            params.disc_levels[0],
            params.disc_levels[1],
            params.approach_left,
            params.approach_deg,
            params.target_posterior_mm,
            params.target_lateral_mm,
        )
        self.entry_lps: F64 = plan.entry_lps
        self.target_lps: F64 = plan.target_lps
        self.geometry = carm_geometry(
            plan.disc_centre_lps
            + np.array([params.isocentre_lateral_mm, 0.0, params.isocentre_cranial_mm]),
            params.lao_deg,
            params.cranial_deg,
            params.sod_mm,
            params.sdd_mm,
            params.detector_size_mm,
            self.size,
        )
        rng = np.random.default_rng([self.seed, 0x5EED])
        self.path = NeedlePath(
            entry_lps=self.entry_lps,
            target_lps=self.target_lps,
            needle=params.needle,
            drift_axis_lps=random_perpendicular(self.target_lps - self.entry_lps, rng),
        )
        self._anatomy = anatomy_projection(
            self.geometry, params.mu_water_per_mm, params.bone_contrast
        )
        self._window = display_window(self._anatomy.attenuation, params.i0_photons,
                                      params.scatter_fraction)
        self._ijk_to_lps = self.geometry.detector_ijk_to_lps
        self._unsharp_sigma_px = max(params.edge_sigma_mm / self.geometry.pixel_mm, 1.0)
        src_pose = self.geometry.carm_to_lps.copy()
        src_pose[:3, 3] = self.geometry.source_lps
        self._source_pose = src_pose

    def frame(self, index: int, t_s: float) -> SimFrame:
        """Frame ``index`` at simulation time ``t_s``; deterministic given seed, index, t_s."""
        p = self.params
        g = self.geometry
        state = self.path.state(t_s)
        line = self._anatomy.attenuation.copy()
        chord, (rows, cols) = needle_chord_mm(
            g, state.hub_lps, state.tip_lps, p.needle.diameter_mm / 2
        )
        labels = np.zeros((g.size, g.size), dtype=np.uint8)
        labels[self._anatomy.vertebra] = 2
        if chord.size:
            line[rows, cols] += np.float32(p.needle_mu_per_mm) * chord
            labels[rows, cols][chord > _NEEDLE_CHORD_MM] = 1
        rng = np.random.default_rng([self.seed, int(index)])
        i0 = np.float32(p.i0_photons)
        primary = i0 * np.exp(-line)
        expected = primary + np.float32(p.scatter_fraction) * np.float32(primary.mean())
        counts = expected + np.sqrt(expected) * rng.standard_normal(
            expected.shape, dtype=np.float32
        )
        low = expected < 30.0
        if low.any():
            counts[low] = rng.poisson(expected[low]).astype(np.float32)
        log_att = np.log(i0 / np.maximum(counts, 0.5))
        if p.edge_enhance > 0:  # the display processing every fluoroscope applies
            blur = cv2.GaussianBlur(log_att, (0, 0), self._unsharp_sigma_px)
            log_att += np.float32(p.edge_enhance) * (log_att - blur)
        lo, hi = self._window
        disp = np.clip((log_att - lo) / (hi - lo), 0.0, 1.0)
        if p.invert_display:
            disp = 1.0 - disp
        img = (disp * 65535.0 + 0.5).astype(np.uint16)
        ends = g.project_points(np.stack([state.hub_lps, state.tip_lps]))
        tip_ij = ends[1]
        axis_ij = ends[1] - ends[0]
        norm = float(np.linalg.norm(axis_ij))
        axis_ij = axis_ij / norm if norm > 1e-9 else np.full(2, np.nan)
        in_view = bool(
            np.all(np.isfinite(tip_ij))
            and np.all(tip_ij >= -0.5)
            and np.all(tip_ij <= g.size - 0.5)
        )
        truth = SimTruth(
            labels=labels,
            label_names=FLUORO_LABELS,
            tip_ij=tip_ij if in_view else np.full(2, np.nan),
            axis_ij=axis_ij,
            tip_lps=state.tip_lps,
            axis_lps=state.axis_lps,
            needle_in_view=in_view,
        )
        return SimFrame(
            index=int(index),
            t_s=float(t_s),
            image=ImageVolume(voxels=img[None], ijk_to_lps=self._ijk_to_lps.copy()),
            poses={
                "NeedleTipToReference": needle_pose(state),
                "CArmToReference": g.carm_to_lps.copy(),
                "FocalSpotToReference": self._source_pose.copy(),
            },
            truth=truth,
        )
