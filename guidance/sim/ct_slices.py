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
  as in :mod:`guidance.sim.control_ct`.
- **Metal artefacts** (2D, in the slice): a dark beam-hardening band along the needle
  axis beyond its ends with bright fringes beside it, bright/dark star streaks radiating
  from the visible ends (random angular profile, decaying with distance), and a dark
  undershoot halo around the shaft. Amplitudes scale with the needle diameter.
- **Distractors** (so "bright" never means "needle"): radio-opaque skin-grid / marker
  dots on the skin (with small streaks of their own), calcifications, and a
  contrast-filled vessel segment. Bone edges are real already.
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
(:meth:`CtSliceParams.training`, :meth:`CtSliceParams.held_out`), including disjoint
slice positions (vertebral levels) and needle gauges.
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
from guidance.sim.frames import SimTruth
from guidance.sim.params import GAUGE_DIAMETER_MM, check_number

__all__ = [
    "CT_LABELS",
    "CtSliceFrame",
    "CtSliceGenerator",
    "CtSliceParams",
    "CtSliceSample",
    "CtSliceSimulator",
    "ct_slice_frames",
]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: Class names of the CT label mask (index = class id).
CT_LABELS: tuple[str, ...] = ("background", "needle")

_MIN_HU = -1024.0
_MAX_HU = 3071.0
#: Below this HU a sample counts as air when looking for the skin.
_AIR_HU = -500.0
#: Training slice centres (LPS z, mm, on the real CT): L3-L1 and T8-T1.
_TRAIN_Z_MM: tuple[tuple[float, float], ...] = ((-340.0, -280.0), (-175.0, -22.0))
#: Held-out slice centres: T12-T10 (with L1's top and T9's bottom), 15 mm from training.
_HELD_OUT_Z_MM: tuple[tuple[float, float], ...] = ((-265.0, -190.0),)


def _check_range(name: str, value: object, lo: float, hi: float) -> None:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple, got {value!r}")
    a = check_number(f"{name}[0]", value[0], lo, hi)
    b = check_number(f"{name}[1]", value[1], lo, hi)
    if a > b:
        raise ValueError(f"{name} must have low <= high, got {value}")


@dataclass(frozen=True)
class CtSliceParams:
    """Ranges the CT slice frames are drawn from (each ``(low, high)``, uniform).

    Attributes:
        z_ranges_mm: LPS z intervals (mm, on the real CT) the slice centre is drawn from,
            chosen with probability proportional to their length.
        spacing_mm: output pixel spacing, mm/px.
        thickness_mm: slice (slab) thickness, mm.
        tilt_deg: largest obliquity of the slice plane about each of x and y, degrees.
        rotation_deg: largest in-plane rotation, degrees (on top of the prone flip).
        prone_probability: chance of a prone patient (image turned by 180 degrees).
        mirror_probability: chance of a left-right mirrored image.
        gauges: needle gauges drawn from (keys of ``GAUGE_DIAMETER_MM``).
        approach_deg: largest angle of the approach from straight posterior, degrees.
        target_lateral_mm: target offset from the spinal cord, lateral (either side), mm.
        target_ap_mm: target offset from the spinal cord along posterior (+) / anterior
            (-), mm.
        depth_fraction: inserted length as a fraction of the skin-to-target distance
            (needles within 2 degrees of the plane; a tilted needle's tip is put where
            the needle crosses the slab, or up to 30 mm past it).
        outside_mm: needle length outside the skin (the hub end), mm.
        in_plane_fraction: share of needles within 2 degrees of the slice plane.
        end_on_fraction: share of needles 45-80 degrees out of plane (a dot); the rest
            are tilted 2 degrees to ``max_tilt_deg``.
        max_tilt_deg: largest tilt of the tilted (not end-on) needles, degrees.
        steel_hu: HU of a voxel filled with steel, before clipping to 3071.
        streak_hu: amplitude of the metal streaks for a 1 mm needle, HU.
        noise_hu: standard deviation of the image noise, HU.
        blur_px: sigma of the scanner's Gaussian PSF, output pixels.
        negative_fraction: share of frames with no needle.
        distractor_probability: chance, per kind (skin markers, calcifications,
            contrast vessel, positioning device), that a frame shows it.
        head_fraction: share of frames that are a synthetic axial head slice instead
            (:meth:`CtSliceGenerator._head_hu`: scalp, a skull of outer table, diploe and
            inner table, brain), always without a needle. The real CT has no skull; a
            model that never saw one takes the straight stretches of its tables for
            needles. Off (0) in training: with 8 % or 15 % head slices the retrained
            model reported no needle on any real head CT frame (0/32, shipped 2/32), but
            found fewer simulated needles (detection 0.67, shipped 0.81; needle Dice
            0.77, target 0.80): it learnt that a needle fainter than the skull is none.
            The shipped model's two skull pieces are rejected instead by the CT needle
            rule (a line, not an edge: :func:`trackers.needle_fit.flank_asymmetry`).
            Drawn only when > 0, so 0 leaves the frames unchanged.
    """

    z_ranges_mm: tuple[tuple[float, float], ...] = _TRAIN_Z_MM
    spacing_mm: tuple[float, float] = (0.45, 0.9)
    thickness_mm: tuple[float, float] = (1.0, 5.0)
    tilt_deg: float = 10.0
    rotation_deg: float = 20.0
    prone_probability: float = 0.5
    mirror_probability: float = 0.3
    gauges: tuple[int, ...] = (16, 18, 20, 22, 25)
    approach_deg: float = 60.0
    target_lateral_mm: tuple[float, float] = (0.0, 35.0)
    target_ap_mm: tuple[float, float] = (-25.0, 20.0)
    depth_fraction: tuple[float, float] = (0.3, 1.05)
    outside_mm: tuple[float, float] = (5.0, 40.0)
    in_plane_fraction: float = 0.6
    end_on_fraction: float = 0.1
    max_tilt_deg: float = 25.0
    steel_hu: tuple[float, float] = (15000.0, 25000.0)
    streak_hu: tuple[float, float] = (60.0, 300.0)
    noise_hu: tuple[float, float] = (5.0, 25.0)
    blur_px: tuple[float, float] = (0.3, 0.8)
    negative_fraction: float = 0.2
    distractor_probability: float = 0.3
    head_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.z_ranges_mm, tuple) or not self.z_ranges_mm:
            raise TypeError(f"z_ranges_mm must be a non-empty tuple, got {self.z_ranges_mm!r}")
        for n, r in enumerate(self.z_ranges_mm):
            _check_range(f"z_ranges_mm[{n}]", r, -2000.0, 2000.0)
        _check_range("spacing_mm", self.spacing_mm, 0.1, 3.0)
        _check_range("thickness_mm", self.thickness_mm, 0.3, 12.0)
        check_number("tilt_deg", self.tilt_deg, 0.0, 30.0)
        check_number("rotation_deg", self.rotation_deg, 0.0, 180.0)
        check_number("prone_probability", self.prone_probability, 0.0, 1.0)
        check_number("mirror_probability", self.mirror_probability, 0.0, 1.0)
        if not isinstance(self.gauges, tuple) or not self.gauges:
            raise TypeError(f"gauges must be a non-empty tuple, got {self.gauges!r}")
        for g in self.gauges:
            if g not in GAUGE_DIAMETER_MM or isinstance(g, bool):
                raise ValueError(f"gauges must be in {sorted(GAUGE_DIAMETER_MM)}, got {g!r}")
        check_number("approach_deg", self.approach_deg, 0.0, 85.0)
        _check_range("target_lateral_mm", self.target_lateral_mm, 0.0, 80.0)
        _check_range("target_ap_mm", self.target_ap_mm, -80.0, 80.0)
        _check_range("depth_fraction", self.depth_fraction, 0.05, 1.5)
        _check_range("outside_mm", self.outside_mm, 0.0, 150.0)
        check_number("in_plane_fraction", self.in_plane_fraction, 0.0, 1.0)
        check_number("end_on_fraction", self.end_on_fraction, 0.0, 1.0)
        if self.in_plane_fraction + self.end_on_fraction > 1.0:
            raise ValueError(
                "in_plane_fraction + end_on_fraction must be <= 1, got "
                f"{self.in_plane_fraction} + {self.end_on_fraction}"
            )
        check_number("max_tilt_deg", self.max_tilt_deg, 2.0, 45.0)
        _check_range("steel_hu", self.steel_hu, 3071.0, 100000.0)
        _check_range("streak_hu", self.streak_hu, 0.0, 2000.0)
        _check_range("noise_hu", self.noise_hu, 0.0, 200.0)
        _check_range("blur_px", self.blur_px, 0.0, 3.0)
        check_number("negative_fraction", self.negative_fraction, 0.0, 1.0)
        check_number("distractor_probability", self.distractor_probability, 0.0, 1.0)
        check_number("head_fraction", self.head_fraction, 0.0, 1.0)

    @classmethod
    def training(cls) -> CtSliceParams:
        """Training ranges (the defaults): slices on L3-L1 and T8-T1, gauges 16/18/20/22/25,
        0.45-0.9 mm/px, 1-5 mm slices, noise 5-25 HU, streaks 60-300 HU, no synthetic
        head slices (see ``head_fraction``)."""
        return cls()

    @classmethod
    def held_out(cls) -> CtSliceParams:
        """Held-out ranges, for evaluation only. What differs from :meth:`training`:

        - slice centres on T12-T10 (LPS z -265 to -190 mm), 15 mm away from any training
          slice centre: vertebral levels the model never saw;
        - gauges 17/19/21/23 (none used in training, all inside the trained range);
        - pixel spacing 0.4-1.0 mm/px, thickness 1.5-6 mm (wider than training);
        - noise 10-30 HU, streaks 100-450 HU, PSF 0.4-1.0 px (more degraded);
        - approach up to 70 degrees from posterior, tilts up to 30 degrees;
        - more distractors (probability 0.4);
        - no synthetic head slices (the held-out set measures needles on the real CT).
        """
        return cls(
            z_ranges_mm=_HELD_OUT_Z_MM,
            spacing_mm=(0.4, 1.0),
            thickness_mm=(1.5, 6.0),
            gauges=(17, 19, 21, 23),
            approach_deg=70.0,
            max_tilt_deg=30.0,
            streak_hu=(100.0, 450.0),
            noise_hu=(10.0, 30.0),
            blur_px=(0.4, 1.0),
            distractor_probability=0.4,
            head_fraction=0.0,
        )


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


def _interval_len(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip(hi - lo, 0.0, None)


def _covered_length(
    pu: np.ndarray, pv: np.ndarray, a: F64, d: F64, length: float, radius: float, half_t: float
) -> np.ndarray:
    """Length (mm) of each line ``(pu, pv, w)``, ``|w| <= half_t``, inside a flat-capped
    cylinder from ``a`` along unit ``d`` for ``length`` mm, radius ``radius`` (plane
    coordinates, mm; w along the normal)."""
    qx, qy, qz = pu - a[0], pv - a[1], -a[2]
    qd = qx * d[0] + qy * d[1] + qz * d[2]
    # Perpendicular parts of q and of the line direction e = (0, 0, 1).
    px, py, pz = qx - qd * d[0], qy - qd * d[1], qz - qd * d[2]
    ex, ey, ez = -d[2] * d[0], -d[2] * d[1], 1.0 - d[2] * d[2]
    A = ex * ex + ey * ey + ez * ez
    B = px * ex + py * ey + pz * ez
    C = px * px + py * py + pz * pz - radius * radius
    big = 1e9
    if A < 1e-12:  # line parallel to the axis
        lo = np.where(C <= 0, -big, big)
        hi = np.where(C <= 0, big, -big)
    else:
        disc = B * B - A * C
        root = np.sqrt(np.clip(disc, 0.0, None))
        ok = disc >= 0
        lo = np.where(ok, (-B - root) / A, big)
        hi = np.where(ok, (-B + root) / A, -big)
    lo = np.maximum(lo, -half_t)
    hi = np.minimum(hi, half_t)
    if abs(d[2]) < 1e-12:  # caps: 0 <= qd + w * d_z <= length
        inside = (qd >= 0) & (qd <= length)
        lo = np.where(inside, lo, big)
    else:
        w1, w2 = -qd / d[2], (length - qd) / d[2]
        lo = np.maximum(lo, np.minimum(w1, w2))
        hi = np.minimum(hi, np.maximum(w1, w2))
    return _interval_len(lo, hi)


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
        c = (size - 1) / 2.0
        jj, ii = np.mgrid[0:size, 0:size].astype(np.float32)
        self._di = ii - np.float32(c)  # pixel offsets from the centre, (size, size)
        self._dj = jj - np.float32(c)

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
                coords[row] = base[comp] + gi[comp] * self._di + gj[comp] * self._dj
            out += ndimage.map_coordinates(
                an.voxels, coords, order=1, cval=_MIN_HU, output=np.float32, prefilter=False
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
            an.voxels, ijk[:, ::-1].T, order=1, cval=_MIN_HU, output=np.float32
        )
        air = hu < _AIR_HU
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
            img = self._head_hu(rng, spacing)
            distractors = ("head", *self._distractors(img, rng, centre, u, v, centre, spacing))
        else:
            img = self._sample_plane_hu(axes, centre, spacing, thickness)
            distractors = self._distractors(img, rng, target, u, v, centre, spacing)

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
            metal, labels, vis = self._render_needle(
                hub, tip_lps, radius, origin, axes, spacing, thickness, labels
            )
            if metal is not None and vis is not None:
                steel = np.float32(rng.uniform(*p.steel_hu))
                self._add_streaks(img, rng, vis, streak, spacing)
                img += metal * (steel - img)
            tip_q = self._to_plane(tip_lps, origin, axes, spacing)
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
        out = np.clip(np.rint(img), _MIN_HU, _MAX_HU).astype(np.int16)
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

    @staticmethod
    def _to_plane(p_lps: F64, origin: F64, axes: F64, spacing: float) -> F64:
        """LPS -> (col i, row j, w mm along the normal)."""
        q = axes.T @ (p_lps - origin)
        return np.array([q[0] / spacing, q[1] / spacing, q[2]])

    def _render_needle(
        self,
        hub: F64,
        tip: F64,
        radius: float,
        origin: F64,
        axes: F64,
        spacing: float,
        thickness: float,
        labels: npt.NDArray[np.uint8],
    ) -> tuple[F32 | None, npt.NDArray[np.uint8], tuple[F64, F64] | None]:
        """Needle volume fraction (size, size) and labels; ``vis`` is the visible part of
        the axis as two (col, row) points (hub side, tip side), None when not in the slab."""
        half_t = 0.5 * thickness
        a = self._to_plane(hub, origin, axes, spacing)
        b = self._to_plane(tip, origin, axes, spacing)
        a_mm = np.array([a[0] * spacing, a[1] * spacing, a[2]])
        b_mm = np.array([b[0] * spacing, b[1] * spacing, b[2]])
        length = float(np.linalg.norm(b_mm - a_mm))
        d = (b_mm - a_mm) / length
        # Axis parameter range (mm from the hub) within the slab widened by the radius.
        margin = half_t + 2.0 * radius
        if abs(d[2]) < 1e-9:
            if abs(a_mm[2]) > margin:
                return None, labels, None
            s0, s1 = 0.0, length
        else:
            s_a, s_b = (-margin - a_mm[2]) / d[2], (margin - a_mm[2]) / d[2]
            s0, s1 = max(0.0, min(s_a, s_b)), min(length, max(s_a, s_b))
            if s0 >= s1:
                return None, labels, None
        p0 = (a_mm + s0 * d)[:2] / spacing
        p1 = (a_mm + s1 * d)[:2] / spacing
        pad = radius / spacing + 2.0
        lo = np.floor(np.minimum(p0, p1) - pad).astype(int)
        hi = np.ceil(np.maximum(p0, p1) + pad).astype(int)
        if np.any(hi < 0) or np.any(lo > self.size - 1):
            return None, labels, None  # entirely outside the image
        lo = np.clip(lo, 0, self.size - 1)
        hi = np.clip(hi, 0, self.size - 1)
        jj, ii = np.mgrid[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1].astype(np.float64)
        # 2D distance (mm) of pixel centres to the projected visible axis.
        seg = p1 - p0
        seg_len2 = float(seg @ seg)
        if seg_len2 < 1e-12:
            t = np.zeros_like(ii)
        else:
            t = np.clip(((ii - p0[0]) * seg[0] + (jj - p0[1]) * seg[1]) / seg_len2, 0.0, 1.0)
        dist = np.hypot(ii - (p0[0] + t * seg[0]), jj - (p0[1] + t * seg[1])) * spacing
        near = dist <= radius + 0.75 * spacing
        if not near.any():
            return None, labels, None
        ni, nj = ii[near], jj[near]
        sub = (np.arange(4) + 0.5) / 4.0 - 0.5
        su, sv = np.meshgrid(sub, sub, indexing="xy")
        pu = (ni[:, None] + su.ravel()[None, :]) * spacing
        pv = (nj[:, None] + sv.ravel()[None, :]) * spacing
        cov = _covered_length(pu, pv, a_mm, d, length, radius, half_t)
        frac_vol = cov.mean(axis=1) / thickness
        footprint = (cov > 1e-6).mean(axis=1)
        metal = np.zeros((self.size, self.size), dtype=np.float32)
        ri, rj = ni.astype(int), nj.astype(int)
        metal[rj, ri] = frac_vol.astype(np.float32)
        labels[rj[footprint >= 0.5], ri[footprint >= 0.5]] = 1
        # Centre line where the axis itself is inside the slab.
        if abs(d[2]) < 1e-9:
            c0, c1 = (0.0, length) if abs(a_mm[2]) <= half_t else (1.0, 0.0)
        else:
            s_a, s_b = (-half_t - a_mm[2]) / d[2], (half_t - a_mm[2]) / d[2]
            c0, c1 = max(0.0, min(s_a, s_b)), min(length, max(s_a, s_b))
        if c1 >= c0:
            # One pixel per column (or row) along the major direction: an 8-connected
            # line that never takes the corner pixels the axis only grazes.
            major = max(abs(float(d[0])), abs(float(d[1])), 1e-6)
            steps = np.arange(c0, c1 + 1e-9, spacing / major)
            if len(steps) == 0 or steps[-1] < c1:
                steps = np.append(steps, c1)
            pts = (a_mm[None, :2] + steps[:, None] * d[None, :2]) / spacing
            pi_, pj_ = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
            ok = (pi_ >= 0) & (pi_ < self.size) & (pj_ >= 0) & (pj_ < self.size)
            labels[pj_[ok], pi_[ok]] = 1
        if float(metal.max()) <= 0.0 and not labels.any():
            return None, labels, None
        return metal, labels, (p0, p1)

    def _add_streaks(
        self,
        img: F32,
        rng: np.random.Generator,
        vis: tuple[F64, F64],
        amp: float,
        spacing: float,
    ) -> None:
        """Metal artefacts of the visible needle part, in place (HU)."""
        p0, p1 = vis
        seg = p1 - p0
        seg_len = float(np.linalg.norm(seg))
        di = self._di + np.float32((self.size - 1) / 2.0)  # absolute column
        dj = self._dj + np.float32((self.size - 1) / 2.0)
        sp = np.float32(spacing)
        art = np.zeros_like(img)
        if seg_len * spacing >= 2.0:
            e = seg / seg_len
            rx, ry = di - np.float32(p0[0]), dj - np.float32(p0[1])
            ex, ey = np.float32(e[0]), np.float32(e[1])
            xi = rx * ex + ry * ey  # along the needle, px
            eta = (ry * ex - rx * ey) * sp  # across it, mm
            beyond = np.maximum(np.maximum(xi - np.float32(seg_len), -xi), 0.0) * sp
            wb = np.float32(rng.uniform(0.8, 2.5))
            decay = np.exp(-beyond / np.float32(rng.uniform(15.0, 60.0)))
            band = -np.exp(-(eta * eta) / (2 * wb * wb))
            band += 0.45 * np.exp(-((np.abs(eta) - 2.5 * wb) ** 2) / (2 * wb * wb))
            art += np.float32(amp * rng.uniform(0.5, 1.2)) * band * decay
        # Star streaks from both visible ends (random angular profile, random phase).
        for end in (p1, p0):
            self._star(art, rng, end, amp * float(rng.uniform(0.2, 0.5)), spacing)
        # Undershoot halo around the shaft.
        if seg_len > 1e-9:
            t = np.clip(((di - p0[0]) * seg[0] + (dj - p0[1]) * seg[1]) / seg_len**2, 0.0, 1.0)
            dist = np.hypot(di - (p0[0] + t * seg[0]), dj - (p0[1] + t * seg[1])) * sp
        else:
            dist = np.hypot(di - p0[0], dj - p0[1]) * sp
        art -= np.float32(amp * rng.uniform(0.0, 0.5)) * np.exp(-dist / 2.0).astype(np.float32)
        img += art

    def _star(
        self, art: F32, rng: np.random.Generator, centre: F64, amp: float, spacing: float
    ) -> None:
        """Bright/dark streaks radiating from ``centre`` (col, row), in place."""
        bins = 720
        prof = ndimage.gaussian_filter1d(rng.standard_normal(bins), 1.5, mode="wrap")
        prof /= max(float(prof.std()), 1e-6)
        prof = np.sign(prof) * np.abs(prof) ** 1.5
        di = self._di + np.float32((self.size - 1) / 2.0 - centre[0])
        dj = self._dj + np.float32((self.size - 1) / 2.0 - centre[1])
        r_px, ang = cv2.cartToPolar(di, dj)  # angle in [0, 2 pi)
        idx = (ang * np.float32(bins / (2 * np.pi))).astype(np.int32)
        np.minimum(idx, bins - 1, out=idx)
        r_mm = r_px * np.float32(spacing)
        env = np.exp(-r_mm / np.float32(rng.uniform(10.0, 50.0))) * (1.0 - np.exp(-r_mm))
        art += np.float32(amp) * prof.astype(np.float32)[idx] * env

    def _distractors(
        self,
        img: F32,
        rng: np.random.Generator,
        target: F64,
        u: F64,
        v: F64,
        centre: F64,
        spacing: float,
    ) -> tuple[str, ...]:
        """Bright non-needle things, drawn in place; returns their names."""
        p = self.params
        names: list[str] = []
        c = (self.size - 1) / 2.0
        di, dj = self._di, self._dj
        if rng.random() < p.distractor_probability:
            # Radio-opaque skin grid / markers: dots on the posterior skin.
            start = np.array([c + (target - centre) @ u / spacing,
                              c + (target - centre) @ v / spacing])
            post = np.array([u[1], v[1]])  # posterior (+y) in pixel coordinates
            base = math.atan2(post[1], post[0]) + rng.uniform(-1.0, 1.0)
            gap_rad = rng.uniform(5.0, 10.0) / 70.0
            n_dots = int(rng.integers(3, 10))
            radius = float(rng.uniform(0.4, 1.2))
            hu = float(rng.uniform(800.0, 3071.0))
            drawn = 0
            for k in range(n_dots):
                ang = base + (k - n_dots / 2) * gap_rad
                pos = self._skin_in_image(img, start, np.array([math.cos(ang), math.sin(ang)]))
                if pos is None:
                    continue
                d = np.hypot(di - np.float32(pos[0] - c), dj - np.float32(pos[1] - c)) * spacing
                f = np.clip(radius - d + 0.5 * spacing, 0.0, spacing) / spacing
                img += f.astype(np.float32) * (np.float32(hu) - img)
                self._star(img, rng, pos, 0.04 * hu * radius, spacing)
                drawn += 1
            if drawn:
                names.append("skin_markers")
        soft = (img > -50) & (img < 150)
        if rng.random() < p.distractor_probability and soft.any():
            for _ in range(int(rng.integers(1, 4))):
                self._blob(img, rng, soft, (0.7, 2.5), (400.0, 1500.0), spacing)
            names.append("calcification")
        if rng.random() < p.distractor_probability and soft.any():
            self._blob(img, rng, soft, (2.0, 7.0), (150.0, 400.0), spacing)
            names.append("contrast_vessel")
        air = self._room_air(img)
        if rng.random() < p.distractor_probability and air.any():
            self._shell(img, rng, air, spacing)
            names.append("positioning_device")
        return tuple(names)

    def _head_hu(self, rng: np.random.Generator, spacing: float) -> F32:
        """A synthetic axial head slice, (size, size) float32 HU: an irregular ellipse
        (semi-axes 60-82 x 72-100 mm, placed anywhere in the field) of scalp (2-7 mm,
        up to 14 mm more at the temples, 15-65 HU), skull (outer table 0.8-2.5 mm and
        inner table 0.7-2.2 mm of 900-2000 HU, diploe 0-7 mm of 250-900 HU, all varying
        around the head, thinning at the temples to one plate without diploe), CSF
        (0.3-3 mm, 0-15 HU) and textured brain (22-45 HU, often with two ventricles), in
        air."""
        x0 = self._di * np.float32(spacing)
        y0 = self._dj * np.float32(spacing)
        fov = spacing * self.size
        cx, cy = rng.uniform(-0.3, 0.3, size=2) * fov
        ang = rng.uniform(-0.5, 0.5)
        ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
        x = (x0 - np.float32(cx)) * ca + (y0 - np.float32(cy)) * sa
        y = -(x0 - np.float32(cx)) * sa + (y0 - np.float32(cy)) * ca
        a, b = rng.uniform(60.0, 82.0), rng.uniform(72.0, 100.0)
        theta = np.arctan2(y / np.float32(b), x / np.float32(a))

        def harmonics(amp: float) -> F32:
            out = np.ones_like(theta)
            for k in range(2, 6):
                out += np.float32(rng.uniform(-amp, amp) / k) * np.cos(
                    np.float32(k) * theta + np.float32(rng.uniform(0, 2 * np.pi)))
            return out

        rho = np.hypot(x / np.float32(a), y / np.float32(b)) / harmonics(0.06)
        depth = (1.0 - rho) * np.float32(0.5 * (a + b))  # mm inside the skull's outer surface
        # Temporal squama: the skull thins towards the sides to a single thin plate
        # without diploe, under the thick temporalis muscle.
        side = np.abs(np.cos(theta)) ** np.float32(rng.uniform(2.0, 6.0))
        thin = 1.0 - np.float32(rng.uniform(0.3, 0.85)) * side
        outer = rng.uniform(0.8, 2.5) * harmonics(0.6) * thin
        diploe = np.maximum(rng.uniform(0.0, 7.0) * harmonics(1.2), 0.0) * (1.0 - side)
        inner = rng.uniform(0.7, 2.2) * harmonics(0.6) * thin
        csf = rng.uniform(0.3, 3.0)
        scalp = rng.uniform(2.0, 7.0) + np.float32(rng.uniform(0.0, 14.0)) * side
        bounds = [-scalp, 0.0, outer, outer + diploe,
                  outer + diploe + inner, outer + diploe + inner + csf]
        texture = cv2.GaussianBlur(rng.standard_normal(x.shape).astype(np.float32), (0, 0),
                                   max(2.0 / spacing, 0.5))
        texture /= max(float(texture.std()), 1e-6)
        cortex = rng.uniform(900.0, 2000.0)
        hu_layers = [
            np.float32(rng.uniform(15.0, 65.0)),  # scalp and temporalis
            np.float32(cortex) * (1 + 0.05 * texture),  # outer table
            np.float32(rng.uniform(250.0, 900.0)) + np.float32(120.0) * texture,  # diploe
            np.float32(cortex * rng.uniform(0.85, 1.15)) * (1 + 0.05 * texture),  # inner
            np.float32(rng.uniform(0.0, 15.0)),  # CSF
            np.float32(rng.uniform(22.0, 45.0)) + np.float32(4.0) * texture,  # brain
        ]
        img = np.full(x.shape, np.float32(_MIN_HU + 24.0))
        half_px = np.float32(0.5 * spacing)
        for edge, hu in zip(bounds, hu_layers, strict=True):
            # Partial volume: the share of the pixel deeper than this boundary.
            f = np.clip((depth - np.asarray(edge, np.float32) + half_px) / np.float32(spacing),
                        0.0, 1.0)
            img += f * (hu - img)
        if rng.random() < 0.6:  # lateral ventricles
            for side in (-1.0, 1.0):
                vx = x - np.float32(side * rng.uniform(4.0, 10.0))
                vy = y - np.float32(rng.uniform(-15.0, 5.0))
                r = np.hypot(vx / np.float32(rng.uniform(3.0, 8.0)),
                             vy / np.float32(rng.uniform(12.0, 25.0)))
                f = np.clip((1.0 - r) * np.float32(3.0 / spacing), 0.0, 1.0)
                img += f * (np.float32(rng.uniform(0.0, 12.0)) - img)
        return img

    @staticmethod
    def _room_air(img: F32) -> np.ndarray:
        """(size, size) bool: the air around the patient: dark regions that reach the
        image border and are as dark as room air on average (lungs are not)."""
        lab, n = ndimage.label(img < -500.0)
        if n == 0:
            return np.zeros(img.shape, bool)
        ids = np.arange(1, n + 1)
        mean = np.asarray(ndimage.mean(img, lab, ids))
        edge = np.zeros(n + 1, bool)
        edge[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
        keep = np.zeros(n + 1, bool)
        keep[ids] = (mean < -950.0) & edge[ids]
        return keep[lab]

    def _shell(self, img: F32, rng: np.random.Generator, air: np.ndarray,
               spacing: float) -> None:
        """A positioning device outside the patient (head holder, couch top,
        immobilisation shell): a thin curved plastic or carbon shell, 0.7-3 mm thick,
        150-1200 HU, radius 60-300 mm, drawn in air only."""
        jj, ii = np.nonzero(air)
        k = int(rng.integers(len(ii)))
        c = (self.size - 1) / 2.0
        radius = rng.uniform(60.0, 300.0)
        phi = rng.uniform(0.0, 2.0 * np.pi)
        cx = ii[k] - c + radius / spacing * math.cos(phi)  # centre, offset pixels
        cy = jj[k] - c + radius / spacing * math.sin(phi)
        x = (self._di - np.float32(cx)) * np.float32(spacing)
        y = (self._dj - np.float32(cy)) * np.float32(spacing)
        dist = np.abs(np.hypot(x, y) - np.float32(radius))
        half = np.float32(0.5 * rng.uniform(0.7, 3.0))
        f = np.clip(half - dist + np.float32(0.5 * spacing), 0.0, spacing) / np.float32(spacing)
        # Only an arc of it, centred on the chosen air pixel.
        ang = np.arctan2(-y, -x) - np.float32(phi)
        ang = np.abs((ang + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi))
        f[ang > np.float32(math.radians(rng.uniform(20.0, 80.0)))] = 0.0
        f[~air] = 0.0
        img += f.astype(np.float32) * (np.float32(rng.uniform(150.0, 1200.0)) - img)

    def _blob(
        self,
        img: F32,
        rng: np.random.Generator,
        where: np.ndarray,
        radius_mm: tuple[float, float],
        hu: tuple[float, float],
        spacing: float,
    ) -> None:
        jj, ii = np.nonzero(where)
        k = int(rng.integers(len(ii)))
        c = (self.size - 1) / 2.0
        ra, rb = rng.uniform(*radius_mm), rng.uniform(*radius_mm)
        ang = rng.uniform(0, np.pi)
        x = (self._di - np.float32(ii[k] - c)) * np.float32(spacing)
        y = (self._dj - np.float32(jj[k] - c)) * np.float32(spacing)
        ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
        xr, yr = x * ca + y * sa, -x * sa + y * ca
        rho = np.sqrt((xr / np.float32(ra)) ** 2 + (yr / np.float32(rb)) ** 2)
        # Soft edge about one pixel wide.
        f = np.clip((1.0 - rho) * np.float32(min(ra, rb) / spacing) + 0.5, 0.0, 1.0)
        img += f * (np.float32(rng.uniform(*hu)) - img)

    def _skin_in_image(self, img: F32, start: F64, direction: F64) -> F64 | None:
        """Pixel (col, row) just outside the skin walking from ``start``; None if none."""
        steps = np.arange(0.0, 2.0 * self.size, 1.0)
        pts = start[None, :] + steps[:, None] * direction[None, :]
        ii, jj = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
        ok = (ii >= 0) & (ii < self.size) & (jj >= 0) & (jj < self.size)
        if not ok.all():
            n_ok = int(np.argmin(ok)) if ok[0] else 0
            ii, jj = ii[:n_ok], jj[:n_ok]
        if len(ii) < 6:
            return None
        air = img[jj, ii] < _AIR_HU
        body = np.flatnonzero(~air)
        if len(body) == 0:
            return None
        after = np.flatnonzero(air[body[0]:]) + body[0]
        if len(after) == 0:
            return None
        k = int(after[0])
        pos: F64 = pts[k] + 0.5 * direction  # sit on the skin, not in it
        return pos


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
