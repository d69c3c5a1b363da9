"""C-arm cone-beam geometry and a fast ray-driven projector (Joseph's method).

The projector sweeps the volume slice by slice along the voxel axis most parallel to the
beam: every ray crosses each such slice once, at a point found by a per-slice linear
map, and the slice is sampled there bilinearly (``cv2.remap``). Summing the samples
times the ray's path length per slice gives the line integral (Joseph 1982, "An
improved algorithm for reprojecting rays through pixel images", IEEE TMI 1:192). One
512x512 projection of the 512x512x133 CT takes well under a second on one core.

Frames: ``carm_to_lps`` has its origin at the isocentre, +x along detector columns
(increasing i), +y along detector rows (increasing j), +z from the detector towards the
source. The source lies at ``iso + sod * z``; the detector centre at
``iso - (sdd - sod) * z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["CArmGeometry", "carm_geometry", "needle_chord_mm", "project_volume"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class CArmGeometry:
    """Cone-beam geometry of one C-arm pose.

    Attributes:
        carm_to_lps: (4, 4) CArmToReference (see module docstring).
        sod_mm: source to isocentre distance, mm.
        sdd_mm: source to detector distance, mm.
        pixel_mm: detector pixel pitch, mm.
        size: detector pixels per side.
    """

    carm_to_lps: F64
    sod_mm: float
    sdd_mm: float
    pixel_mm: float
    size: int

    @property
    def source_lps(self) -> F64:
        """(3,) focal spot, LPS mm."""
        return self.carm_to_lps[:3, 3] + self.sod_mm * self.carm_to_lps[:3, 2]

    @property
    def detector_ijk_to_lps(self) -> F64:
        """(4, 4) detector pixel (i=col, j=row, k) to LPS mm; k steps towards the source
        by one pixel pitch (so the matrix is orthonormal times ``pixel_mm``)."""
        r = self.carm_to_lps[:3, :3]
        centre = self.carm_to_lps[:3, 3] - (self.sdd_mm - self.sod_mm) * r[:, 2]
        half = (self.size - 1) / 2.0
        m = np.eye(4)
        m[:3, :3] = r * self.pixel_mm
        m[:3, 3] = centre - half * self.pixel_mm * (r[:, 0] + r[:, 1])
        return m

    def pixel_centres_lps(self) -> F64:
        """(size, size, 3) LPS mm of every detector pixel centre, indexed [j, i]."""
        m = self.detector_ijk_to_lps
        idx = np.arange(self.size, dtype=np.float64)
        return (
            m[:3, 3][None, None, :]
            + idx[None, :, None] * m[:3, 0][None, None, :]
            + idx[:, None, None] * m[:3, 1][None, None, :]
        )

    @property
    def lps_to_pixel(self) -> F64:
        """(3, 4) projection matrix ``(i, j, 1) ~ P [x; 1]`` of LPS mm points (the same
        mapping as :meth:`project_points`; row 3 has unit norm and gives the depth along
        the beam, positive in front of the source): what a C-arm calibration measures."""
        r = self.carm_to_lps[:3, :3]
        x, y, z = r[:, 0], r[:, 1], r[:, 2]
        half = (self.size - 1) / 2.0
        f = self.sdd_mm / self.pixel_mm
        m = np.stack([f * x - half * z, f * y - half * z, -z])
        return np.hstack([m, (-m @ self.source_lps)[:, None]])

    def project_points(self, points_lps: npt.ArrayLike) -> F64:
        """Perspective projection of (N, 3) LPS points to (N, 2) detector (i, j) pixels.

        Points at or behind the source plane give NaN.
        """
        p = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        r = self.carm_to_lps[:3, :3]
        rel = (p - self.source_lps) @ r  # coordinates in the C-arm axes, from the source
        depth = -rel[:, 2]  # distance along the beam (source -> detector)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(depth > 1e-6, self.sdd_mm / depth, np.nan)
        half = (self.size - 1) / 2.0
        i = rel[:, 0] * scale / self.pixel_mm + half
        j = rel[:, 1] * scale / self.pixel_mm + half
        return np.stack([i, j], axis=1)


def carm_geometry(
    isocentre_lps: npt.ArrayLike,
    lao_deg: float,
    cranial_deg: float,
    sod_mm: float,
    sdd_mm: float,
    detector_size_mm: float,
    size: int,
) -> CArmGeometry:
    """C-arm pose from clinical angles.

    At (0, 0) the view is AP of a supine patient: source posterior, beam towards
    anterior (-y in LPS), detector columns towards the patient's left (+x), rows towards
    the feet (-z), so that the patient's right shows on the image's left. LAO rotates the
    detector towards the patient's left about the long axis; cranial tilts it towards
    the head.

    Args:
        isocentre_lps: (3,) LPS mm.
        lao_deg: primary angle (> 0 LAO, < 0 RAO), degrees.
        cranial_deg: secondary angle (> 0 cranial, < 0 caudal), degrees.
        sod_mm: source to isocentre, mm.
        sdd_mm: source to detector, mm.
        detector_size_mm: detector side, mm.
        size: pixels per side.

    Raises:
        ValueError: non-positive distances or sizes.
    """
    if not (0 < sod_mm < sdd_mm):
        raise ValueError(f"need 0 < sod_mm < sdd_mm, got {sod_mm}, {sdd_mm}")
    if size < 2 or detector_size_mm <= 0:
        raise ValueError(
            f"size must be >= 2 and detector_size_mm > 0, got {size}, {detector_size_mm}"
        )
    a, b = math.radians(lao_deg), math.radians(cranial_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1.0]])
    rx = np.array(
        [[1.0, 0.0, 0.0], [0.0, math.cos(-b), -math.sin(-b)], [0.0, math.sin(-b), math.cos(-b)]]
    )
    rot = rz @ rx
    col0 = np.array([1.0, 0.0, 0.0])
    row0 = np.array([0.0, 0.0, -1.0])
    to_source0 = np.array([0.0, 1.0, 0.0])  # posterior: the source side in AP
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = rot @ col0, rot @ row0, rot @ to_source0
    m[:3, 3] = np.asarray(isocentre_lps, dtype=np.float64).reshape(3)
    return CArmGeometry(
        carm_to_lps=m,
        sod_mm=float(sod_mm),
        sdd_mm=float(sdd_mm),
        pixel_mm=float(detector_size_mm) / size,
        size=int(size),
    )


def project_volume(
    volume: np.ndarray, ijk_to_lps: npt.ArrayLike, geometry: CArmGeometry
) -> npt.NDArray[np.float32]:
    """Line integrals of a volume along every detector ray.

    Args:
        volume: (k, j, i) or (k, j, i, c) values per voxel (e.g. attenuation in 1/mm);
            c <= 4 channels are projected together.
        ijk_to_lps: (4, 4) voxel index to LPS mm.
        geometry: the C-arm pose.

    Returns:
        (size, size) float32 (or (size, size, c)): integral of value * path length (mm)
        over each ray from source to detector pixel, indexed [j, i].
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 3:
        vol = vol[..., None]
    if vol.ndim != 4 or vol.shape[3] > 4:
        raise ValueError(f"volume must be (k, j, i) or (k, j, i, c<=4), got {volume.shape}")
    m = np.asarray(ijk_to_lps, dtype=np.float64)
    inv = np.linalg.inv(m)
    src_lps = geometry.source_lps
    pix_lps = geometry.pixel_centres_lps().reshape(-1, 3)
    src = inv[:3, :3] @ src_lps + inv[:3, 3]  # (i, j, k) index coordinates
    pix = pix_lps @ inv[:3, :3].T + inv[:3, 3]
    d = pix - src
    # Sweep along the index axis where the central ray advances most voxels per mm.
    centre_dir = d[d.shape[0] // 2 + geometry.size // 2]
    axis = int(np.argmax(np.abs(centre_dir)))  # 0 = i, 1 = j, 2 = k
    others = [a for a in (0, 1, 2) if a != axis]  # index axes remaining in the slice
    # Volume array axes are (k, j, i): index axis a lives at array axis 2 - a.
    n_ch = vol.shape[3]
    moved = np.moveaxis(vol[..., 0] if n_ch == 1 else vol, 2 - axis, 0)
    arr = np.ascontiguousarray(moved)  # (n_slices, rows, cols[, c])
    # After moving, the slice's array axes are the remaining ones in (k, j, i) order,
    # i.e. rows = the larger index axis, cols = the smaller one.
    row_axis, col_axis = max(others), min(others)
    with np.errstate(divide="ignore"):
        inv_da = 1.0 / d[:, axis]
    g_row = (d[:, row_axis] * inv_da).astype(np.float32).reshape(geometry.size, geometry.size)
    g_col = (d[:, col_axis] * inv_da).astype(np.float32).reshape(geometry.size, geometry.size)
    step_mm = (np.linalg.norm(pix_lps - src_lps, axis=1) * np.abs(inv_da)).astype(np.float32)
    step_mm = step_mm.reshape(geometry.size, geometry.size)
    n_slices = arr.shape[0]
    acc = np.zeros((geometry.size, geometry.size, n_ch), dtype=np.float32)
    map_r = np.empty((geometry.size, geometry.size), dtype=np.float32)
    map_c = np.empty_like(map_r)
    for s in range(n_slices):
        ds = np.float32(s - src[axis])
        np.multiply(g_row, ds, out=map_r)
        map_r += np.float32(src[row_axis])
        np.multiply(g_col, ds, out=map_c)
        map_c += np.float32(src[col_axis])
        sample = cv2.remap(
            arr[s],
            map_c,
            map_r,
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        if n_ch == 1:
            acc[..., 0] += sample
        else:
            acc += sample
    acc *= step_mm[..., None]
    return acc[..., 0] if volume.ndim == 3 else acc


def needle_chord_mm(
    geometry: CArmGeometry,
    hub_lps: npt.ArrayLike,
    tip_lps: npt.ArrayLike,
    radius_mm: float,
    pixel_rays: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.float32], tuple[slice, slice]]:
    """Path length (mm) of each detector ray through a solid cylinder (the needle).

    A ray at distance d from the cylinder axis, crossing it at angle g, travels
    2 * sqrt(r^2 - d^2) / sin(g) inside it; only rays whose closest point on the axis
    lies between hub and tip count. Work is limited to the bounding box of the
    needle's projection.

    Args:
        geometry: the C-arm pose.
        hub_lps, tip_lps: (3,) needle ends, LPS mm.
        radius_mm: needle outer radius, mm.
        pixel_rays: optional (size, size, 3) unit ray directions, source -> pixel, cached
            by the caller.

    Returns:
        (chord, (rows, cols)): chord lengths (float32, mm) on the bounding-box window
        given by the two slices of the detector grid [j, i]; an empty window when the
        needle projects outside the detector.
    """
    hub = np.asarray(hub_lps, dtype=np.float64)
    tip = np.asarray(tip_lps, dtype=np.float64)
    ends = geometry.project_points(np.stack([hub, tip]))
    n = geometry.size
    empty = (np.zeros((0, 0), np.float32), (slice(0, 0), slice(0, 0)))
    if not np.all(np.isfinite(ends)):
        return empty
    margin = 3.0 + radius_mm * geometry.sdd_mm / geometry.sod_mm / geometry.pixel_mm * 2.0
    i0 = max(math.floor(ends[:, 0].min() - margin), 0)
    i1 = min(math.ceil(ends[:, 0].max() + margin) + 1, n)
    j0 = max(math.floor(ends[:, 1].min() - margin), 0)
    j1 = min(math.ceil(ends[:, 1].max() + margin) + 1, n)
    if i0 >= i1 or j0 >= j1:
        return empty
    if pixel_rays is None:
        m = geometry.detector_ijk_to_lps
        jj, ii = np.mgrid[j0:j1, i0:i1].astype(np.float64)
        pts = m[:3, 3] + ii[..., None] * m[:3, 0] + jj[..., None] * m[:3, 1]
        rays = pts - geometry.source_lps
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    else:
        rays = pixel_rays[j0:j1, i0:i1]
    length = float(np.linalg.norm(tip - hub))
    a = (tip - hub) / length
    s = geometry.source_lps
    w0 = s - hub
    # Closest points between ray s + t*r and axis hub + u*a (standard line-line formula).
    b = rays @ a  # cos of the angle between ray and axis
    dr = rays @ w0
    da = float(w0 @ a)
    denom = 1.0 - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (b * da - dr) / denom
        u = (da - b * dr) / denom
    closest = w0[None, None, :] + t[..., None] * rays - u[..., None] * a[None, None, :]
    dist = np.linalg.norm(closest, axis=-1)
    sin_g = np.sqrt(np.clip(denom, 1e-6, None))
    chord = 2.0 * np.sqrt(np.clip(radius_mm**2 - dist**2, 0.0, None)) / sin_g
    chord = np.where((u >= 0.0) & (u <= length), chord, 0.0)
    return chord.astype(np.float32), (slice(j0, j1), slice(i0, i1))
