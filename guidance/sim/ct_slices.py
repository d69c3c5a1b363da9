"""Simulated CT-fluoroscopy / control-CT slices of the real CT with a steel needle.

Training and evaluation data for a CT needle segmenter. Each frame is a reformatted
slice of the real CT (:func:`guidance.data.load_real_ct`) through the spine (T1 to L3):
slightly oblique (gantry tilt, oblique reformat), rotated in plane (prone patients show
the spine at the top), optionally mirrored, zoomed to a random pixel spacing (CT
fluoroscopy fields of view of about 100-260 mm), then:

- **Needle**: a steel cylinder of a random gauge from the posterior or posterolateral
  skin towards the paraspinal / spinal region (the target is drawn around the spinal
  cord of the slice: facets, foramina, lamina, vertebral body). It lies in the slice
  plane, tilted out of it (a shorter segment) or nearly end-on (a dot). Partial volume
  is exact for a flat-capped cylinder: for each of 4 x 4 sub-pixel lines through the
  slab (random thickness) the covered length is solved in closed form (a quadratic for
  the cylinder, intervals for the caps and the slab). The pixel value is
  ``(1 - f) * tissue + f * steel_hu`` with ``f`` the covered volume fraction, blurred
  by the scanner's PSF (blooming) and clipped at 3071 HU, the top of the 12-bit scale,
  as in :mod:`guidance.sim.control_ct`. (:mod:`guidance.sim.ct_needle_render`.)
- **Metal artefacts** (2D, in the slice): a dark beam-hardening band along the needle
  axis beyond its ends with bright fringes beside it, bright/dark star streaks radiating
  from the visible ends (random angular profile, decaying with distance), and a dark
  undershoot halo around the shaft. Amplitudes scale with the needle diameter.
  (:mod:`guidance.sim.ct_needle_render`.)
- **Distractors** (so "bright" never means "needle"): radio-opaque skin-grid / marker
  dots on the skin (with small streaks of their own), calcifications, a
  contrast-filled vessel segment and a positioning device in the room air; optionally a
  whole synthetic head slice instead. Bone edges are real already.
  (:mod:`guidance.sim.ct_distractors`.)
- **Scanner**: Gaussian PSF blur, correlated Gaussian noise of random sigma.

Some frames have no needle at all (``negative_fraction``).

Ground truth: :class:`~guidance.sim.frames.SimTruth` with :data:`CT_LABELS`; a pixel is
``needle`` where the needle's footprint (the part inside the slab, projected on the
plane) covers >= half the pixel, and always along the projected centre line where the
axis lies inside the slab, so a thin needle in a thick slice is never unlabelled where
it shows. ``tip_ij`` is the tip when it lies inside the slab and the image (NaN
otherwise; ``needle_in_view`` says the same), ``axis_ij`` the in-plane hub -> tip
direction (NaN end-on or with no needle in the slice).

Frames are deterministic functions of ``(seed, index)``: randomness only from
``np.random.default_rng([seed, index])``. Training and held-out parameter ranges differ
(:meth:`CtSliceParams.training`, :meth:`CtSliceParams.held_out`, in
:mod:`guidance.sim.ct_slice_params`), including disjoint slice positions (vertebral
levels) and needle gauges. This module draws a frame's geometry (slice plane, target,
needle path through the real anatomy) and composes the image and its truth.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.sim.ct_distractors import draw_distractors, head_slice_hu
from guidance.sim.ct_needle_render import PixelGrid, add_streaks, render_needle, to_plane
from guidance.sim.ct_slice_params import AIR_HU, MAX_HU, MIN_HU, CtSliceParams
from guidance.sim.frames import SimTruth
from guidance.sim.params import GAUGE_DIAMETER_MM

__all__ = [
    "CT_LABELS",
    "CtSliceFrame",
    "CtSliceGenerator",
    "CtSliceSample",
    "CtSliceSimulator",
    "ct_slice_frames",
]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: Class names of the CT label mask (index = class id).
CT_LABELS: tuple[str, ...] = ("background", "needle")


@dataclass(frozen=True)
class CtSliceSample:
    """What was drawn for one frame (recorded so a frame can be explained).

    Attributes:
        centre_lps: (3,) slice centre, LPS mm.
        spacing_mm: pixel spacing, mm/px.
        thickness_mm: slice thickness, mm.
        has_needle: whether a needle was inserted.
        gauge: needle gauge (0 without needle).
        tilt_out_of_plane_deg: needle angle to the slice plane, degrees (NaN: no needle).
        noise_hu: noise sigma, HU.
        streak_hu: streak amplitude used, HU (0 without needle).
        distractors: names of the distractors drawn.
    """

    centre_lps: F64
    spacing_mm: float
    thickness_mm: float
    has_needle: bool
    gauge: int
    tilt_out_of_plane_deg: float
    noise_hu: float
    streak_hu: float
    distractors: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class CtSliceFrame:
    """One simulated CT slice with its ground truth.

    Attributes:
        index: frame index within the generator.
        image: (size, size) int16 HU, clipped to [-1024, 3071]; ``image[row, col]``.
        spacing_mm: pixel spacing (rows and columns), mm.
        thickness_mm: slice thickness, mm.
        ijk_to_lps: (4, 4) float64, pixel (i=col, j=row, k) to LPS mm; k steps one slice
            thickness along the plane normal, k = 0 is the slice centre plane.
        truth: ground truth; ``labels`` (size, size) uint8 with :data:`CT_LABELS`,
            ``tip_ij``/``axis_ij`` in pixels (col, row), ``tip_lps``/``axis_lps`` in LPS.
        sample: what was drawn for this frame.
    """

    index: int
    image: npt.NDArray[np.int16]
    spacing_mm: float
    thickness_mm: float
    ijk_to_lps: F64
    truth: SimTruth
    sample: CtSliceSample

    @property
    def volume(self) -> ImageVolume:
        """The frame as a one-slice :class:`ImageVolume` (``voxels`` (1, size, size))."""
        return ImageVolume(self.image[None], self.ijk_to_lps)


@dataclass(frozen=True)
class _Anatomy:
    """The real CT and the spinal cord centre per slice (LPS x, y), cached."""

    voxels: np.ndarray  # [k, j, i] int16 HU
    lps_to_ijk: F64
    cord_xy_by_k: F64  # (K, 2)
    z0_mm: float
    dz_mm: float


@functools.lru_cache(maxsize=1)
def _anatomy() -> _Anatomy:
    from guidance.data import load_real_ct, load_real_labels, structure_names

    ct = load_real_ct()
    labels = load_real_labels()
    names = {v: k for k, v in structure_names().items()}
    cord = labels.voxels == names["spinal_cord"]
    nk = ct.voxels.shape[0]
    xy = np.full((nk, 2), np.nan)
    for k in range(nk):
        jj, ii = np.nonzero(cord[k])
        if len(ii):
            p = ct.ijk_to_lps_points(np.stack([ii.mean(), jj.mean(), float(k)])[None])[0]
            xy[k] = p[:2]
    have = np.flatnonzero(np.isfinite(xy[:, 0]))
    if len(have) == 0:
        raise ValueError("the real CT's label map has no spinal_cord voxels")
    for c in range(2):  # fill slices without cord by interpolation
        xy[:, c] = np.interp(np.arange(nk), have, xy[have, c])
    m = ct.ijk_to_lps
    if abs(m[2, 0]) > 1e-6 or abs(m[2, 1]) > 1e-6:
        raise ValueError("the real CT is expected to have axial slices")
    return _Anatomy(ct.voxels, ct.lps_to_ijk, xy, float(m[2, 3]), float(m[2, 2]))


def _rot(axis: int, angle_rad: float) -> F64:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    r = np.eye(3)
    a, b = [(1, 2), (2, 0), (0, 1)][axis]
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _unit(v: F64) -> F64:
    out: F64 = v / float(np.linalg.norm(v))
    return out


class CtSliceGenerator:
    """Deterministic CT slice frames: ``frame(index)`` depends only on (seed, index).

    Thread-safe: frames share only the read-only cached CT.

    Args:
        size: output image side, pixels (32-1024).
        seed: random seed (int >= 0).
        params: ranges to draw from (default :meth:`CtSliceParams.training`).

    Raises:
        TypeError: wrong argument types.
        ValueError: size or seed out of range.
    """

    def __init__(self, size: int, seed: int, params: CtSliceParams | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if not 32 <= size <= 1024:
            raise ValueError(f"size must be in [32, 1024], got {size}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        params = CtSliceParams.training() if params is None else params
        if not isinstance(params, CtSliceParams):
            raise TypeError(f"params must be CtSliceParams, got {type(params).__name__}")
        self.size = size
        self.seed = seed
        self.params = params
        self._grid = PixelGrid.square(size)

    # -- geometry -------------------------------------------------------------------

    def _plane(self, rng: np.random.Generator) -> tuple[F64, F64, float, float]:
        """(3x3 columns u, v, n in LPS; centre (3,); spacing; thickness)."""
        p = self.params
        lengths = np.array([hi - lo for lo, hi in p.z_ranges_mm]) + 1e-6
        r = p.z_ranges_mm[int(rng.choice(len(lengths), p=lengths / lengths.sum()))]
        z = float(rng.uniform(*r))
        spacing = float(rng.uniform(*p.spacing_mm))
        thickness = float(rng.uniform(*p.thickness_mm))
        tilt = np.radians(rng.uniform(-p.tilt_deg, p.tilt_deg, size=2))
        rot = math.radians(rng.uniform(-p.rotation_deg, p.rotation_deg))
        if rng.random() < p.prone_probability:
            rot += math.pi
        # Standard axial display: columns towards patient left (+x), rows posterior (+y).
        axes = _rot(0, float(tilt[0])) @ _rot(1, float(tilt[1])) @ _rot(2, rot)
        if rng.random() < p.mirror_probability:
            axes = axes @ np.diag([-1.0, 1.0, -1.0])  # mirror u; keep a right-handed n
            axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
        centre = np.array([0.0, 0.0, z])
        return axes, centre, spacing, thickness

    def _cord_xy(self, z: float) -> F64:
        an = _anatomy()
        k = (z - an.z0_mm) / an.dz_mm
        k = min(max(k, 0.0), len(an.cord_xy_by_k) - 1.0)
        k0 = math.floor(k)
        k1 = min(k0 + 1, len(an.cord_xy_by_k) - 1)
        w = k - k0
        xy: F64 = (1 - w) * an.cord_xy_by_k[k0] + w * an.cord_xy_by_k[k1]
        return xy

    def _sample_plane_hu(
        self, axes: F64, centre: F64, spacing: float, thickness: float
    ) -> F32:
        """Trilinear reformat of the CT on the plane (size, size) float32 HU; slabs over 1.5
        times the CT's 2.5 mm slices average two planes at +-thickness/4."""
        an = _anatomy()
        m = an.lps_to_ijk
        offsets = [0.0] if thickness <= 3.75 else [-0.25 * thickness, 0.25 * thickness]
        out = np.zeros((self.size, self.size), dtype=np.float32)
        for off in offsets:
            c = centre + off * axes[:, 2]
            # ijk of each pixel: affine in (di, dj).
            base = m[:3, :3] @ c + m[:3, 3]
            gi = m[:3, :3] @ (axes[:, 0] * spacing)
            gj = m[:3, :3] @ (axes[:, 1] * spacing)
            coords = np.empty((3, self.size, self.size), dtype=np.float32)
            for row, comp in enumerate((2, 1, 0)):  # map_coordinates wants (k, j, i)
                coords[row] = base[comp] + gi[comp] * self._grid.di + gj[comp] * self._grid.dj
            out += ndimage.map_coordinates(
                an.voxels, coords, order=1, cval=MIN_HU, output=np.float32, prefilter=False
            )
        out /= np.float32(len(offsets))
        return out

    def _skin_exit(self, start: F64, direction: F64, max_mm: float = 250.0) -> F64 | None:
        """First point along ``direction`` from ``start`` (LPS) followed by 8 mm of air."""
        an = _anatomy()
        steps = np.arange(0.0, max_mm, 1.0)
        pts = start[None, :] + steps[:, None] * direction[None, :]
        ijk = pts @ an.lps_to_ijk[:3, :3].T + an.lps_to_ijk[:3, 3]
        hu = ndimage.map_coordinates(
            an.voxels, ijk[:, ::-1].T, order=1, cval=MIN_HU, output=np.float32
        )
        air = hu < AIR_HU
        run = 8
        windows = np.lib.stride_tricks.sliding_window_view(air, run)
        hits = np.flatnonzero(windows.all(axis=1))
        if len(hits) == 0:
            return None
        out: F64 = pts[int(hits[0])]
        return out

    # -- frame ----------------------------------------------------------------------

    def frame(self, index: int) -> CtSliceFrame:
        """Frame ``index`` (>= 0); the same (seed, index) always gives the same frame.

        Raises:
            TypeError, ValueError: bad index.
        """
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        p = self.params
        rng = np.random.default_rng([self.seed, int(index)])
        axes, centre, spacing, thickness = self._plane(rng)
        u, v, n = axes[:, 0], axes[:, 1], axes[:, 2]
        cord = np.array([*self._cord_xy(float(centre[2])), centre[2]])
        side = 1.0 if rng.random() < 0.5 else -1.0
        target = cord + np.array(
            [side * rng.uniform(*p.target_lateral_mm), rng.uniform(*p.target_ap_mm), 0.0]
        )
        target -= float(n @ (target - centre)) * n  # into the centre plane
        fov = spacing * self.size
        shift = rng.uniform(-0.3, 0.3, size=2) * fov
        centre = target + shift[0] * u + shift[1] * v  # the field of view follows the target
        origin = centre - (self.size - 1) / 2.0 * spacing * (u + v)
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, 0] = u * spacing
        ijk_to_lps[:3, 1] = v * spacing
        ijk_to_lps[:3, 2] = n * thickness
        ijk_to_lps[:3, 3] = origin

        head = p.head_fraction > 0 and rng.random() < p.head_fraction
        if head:
            img = head_slice_hu(self._grid, rng, spacing)
            distractors = ("head", *draw_distractors(
                self._grid, p.distractor_probability, img, rng, centre, u, v, centre, spacing))
        else:
            img = self._sample_plane_hu(axes, centre, spacing, thickness)
            distractors = draw_distractors(
                self._grid, p.distractor_probability, img, rng, target, u, v, centre, spacing)

        has_needle = not head and bool(rng.random() >= p.negative_fraction)
        labels = np.zeros((self.size, self.size), dtype=np.uint8)
        nan2, nan3 = np.full(2, np.nan), np.full(3, np.nan)
        tip_ij, axis_ij, tip_lps, axis_lps = nan2, nan2.copy(), nan3, nan3.copy()
        in_view = False
        gauge, tilt_deg, streak = 0, float("nan"), 0.0
        metal: F32 | None = None
        if has_needle:
            gauge = int(rng.choice(p.gauges))
            radius = 0.5 * GAUGE_DIAMETER_MM[gauge]
            r_tilt = rng.random()
            if r_tilt < p.in_plane_fraction:
                tilt_deg = float(rng.uniform(0.0, 2.0))
            elif r_tilt < p.in_plane_fraction + p.end_on_fraction:
                tilt_deg = float(rng.uniform(45.0, 80.0))
            else:
                tilt_deg = float(rng.uniform(2.0, p.max_tilt_deg))
            tilt_deg *= 1.0 if rng.random() < 0.5 else -1.0
            w0 = rng.uniform(-0.4, 0.4) * thickness
            target_n = target + w0 * n
            # Out of the body: posterior (+y in LPS) turned towards one side, in plane.
            post = _unit(np.array([0.0, 1.0, 0.0]) - n[1] * n)
            lat = _unit(np.cross(n, post))
            theta = math.radians(rng.uniform(-p.approach_deg, p.approach_deg))
            out_in_plane = math.cos(theta) * post + math.sin(theta) * lat
            t_rad = math.radians(tilt_deg)
            out_dir = _unit(math.cos(t_rad) * out_in_plane + math.sin(t_rad) * n)
            entry = self._skin_exit(target_n, out_dir)
            if entry is None:
                entry = target_n + 120.0 * out_dir
            path_mm = max(float(np.linalg.norm(entry - target_n)), 5.0)
            if abs(tilt_deg) <= 2.0:
                depth = rng.uniform(*p.depth_fraction) * path_mm
            else:
                # A tilted needle crosses the slab only near target_n: put its tip near
                # there (inside the slab, or past it so the slab shows the shaft only).
                half_vis = 0.5 * thickness / math.sin(math.radians(abs(tilt_deg)))
                half_vis = min(half_vis, 0.8 * path_mm)
                depth = path_mm + rng.uniform(-0.7 * half_vis, min(30.0, 0.5 * path_mm))
            depth = max(depth, 3.0)
            tip_lps = entry - depth * out_dir
            hub = entry + rng.uniform(*p.outside_mm) * out_dir
            axis_lps = -out_dir
            streak = float(rng.uniform(*p.streak_hu)) * math.sqrt(2.0 * radius)
            metal, labels, vis = render_needle(
                self._grid, hub, tip_lps, radius, origin, axes, spacing, thickness, labels
            )
            if metal is not None and vis is not None:
                steel = np.float32(rng.uniform(*p.steel_hu))
                add_streaks(self._grid, img, rng, vis, streak, spacing)
                img += metal * (steel - img)
            tip_q = to_plane(tip_lps, origin, axes, spacing)
            if abs(tip_q[2]) <= 0.5 * thickness and self._inside(tip_q):
                tip_ij = tip_q[:2].copy()
                in_view = True
            if vis is not None:
                ax = np.array([axis_lps @ u, axis_lps @ v])
                if float(np.linalg.norm(ax)) > 0.1:
                    axis_ij = ax / float(np.linalg.norm(ax))
        sigma = float(rng.uniform(*p.blur_px))
        if sigma > 0.05:
            img = np.asarray(cv2.GaussianBlur(img, (0, 0), sigma), dtype=np.float32)
        noise_hu = float(rng.uniform(*p.noise_hu))
        if noise_hu > 0:
            noise = rng.standard_normal((self.size, self.size), dtype=np.float32)
            noise = np.asarray(cv2.GaussianBlur(noise, (0, 0), 0.7), dtype=np.float32)
            # A 0.7 px Gaussian leaves about 0.40 of white noise's sigma.
            img += noise * np.float32(noise_hu / 0.40)
        out = np.clip(np.rint(img), MIN_HU, MAX_HU).astype(np.int16)
        truth = SimTruth(
            labels=labels,
            label_names=CT_LABELS,
            tip_ij=tip_ij,
            axis_ij=axis_ij,
            tip_lps=tip_lps,
            axis_lps=axis_lps,
            needle_in_view=in_view,
        )
        sample = CtSliceSample(
            centre_lps=centre,
            spacing_mm=spacing,
            thickness_mm=thickness,
            has_needle=has_needle,
            gauge=gauge,
            tilt_out_of_plane_deg=tilt_deg,
            noise_hu=noise_hu,
            streak_hu=streak,
            distractors=distractors,
        )
        return CtSliceFrame(int(index), out, spacing, thickness, ijk_to_lps, truth, sample)

    def _inside(self, q: F64) -> bool:
        return bool(-0.5 <= q[0] <= self.size - 0.5 and -0.5 <= q[1] <= self.size - 0.5)


class CtSliceSimulator(CtSliceGenerator):
    """:class:`CtSliceGenerator` with the parameters first:
    ``CtSliceSimulator(params, size=..., seed=...)``, like the other simulators."""

    def __init__(self, params: CtSliceParams | None = None, *, size: int, seed: int) -> None:
        super().__init__(size, seed, params)


def ct_slice_frames(
    n: int, size: int, seed: int, params: CtSliceParams | None = None
) -> Iterator[CtSliceFrame]:
    """``n`` frames ``0..n-1`` of :class:`CtSliceGenerator` ``(size, seed, params)``.

    Args:
        n: number of frames (>= 0).
        size: image side, pixels.
        seed: random seed; frame ``k`` depends only on (seed, k).
        params: ranges (default :meth:`CtSliceParams.training`).

    Yields:
        :class:`CtSliceFrame` (image (size, size) int16 HU, labels, tip, spacing).

    Raises:
        TypeError, ValueError: bad arguments (raised at the call, not at iteration).
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gen = CtSliceGenerator(size, seed, params)
    return (gen.frame(k) for k in range(n))
