"""Classical needle detection in a 2D frame: Hessian ridge filter + RANSAC line fit.

The needle is a thin straight ridge: bright in ultrasound B-mode, dark in a fluoroscopy
display (radio-opaque). The ridge response is the larger-magnitude Hessian eigenvalue of
the Gaussian-smoothed image (Frangi et al. 1998, eq. 4-5, single scale, without the
blob term), thresholded against the frame's own response statistics; a line is fitted
to the strongest responses with RANSAC (Fischler & Bolles 1981) and refined by total
least squares (PCA) on its inliers. The needle extent is the longest run of inliers
along the line with no gap larger than ``max_gap_px``.

Buffers are sized once per input shape; nothing large is allocated per frame except
what OpenCV allocates internally.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["NeedleDetection", "RidgeNeedleDetector", "orient_ends"]

F64 = npt.NDArray[np.float64]


def orient_ends(a: F64, b: F64, shape: tuple[int, ...],
                hub_hint_ij: npt.ArrayLike | None = None) -> tuple[F64, F64]:
    """Which end of a needle line is the hub: ``(hub, tip)``.

    Args:
        a, b: (2,) (col, row) ends of the visible needle, pixels.
        shape: (rows, cols) of the image.
        hub_hint_ij: (2,) a point on the hub side (the planned entry projected into the
            frame, or the previous hub); without it the end nearer the image border is
            the hub (needles enter from outside the picture).
    """
    if hub_hint_ij is not None:
        hint = np.asarray(hub_hint_ij, np.float64)
        return (a, b) if np.linalg.norm(a - hint) <= np.linalg.norm(b - hint) else (b, a)
    h, wdt = shape[0], shape[1]

    def border(p: F64) -> float:
        return float(min(p[0], p[1], wdt - 1 - p[0], h - 1 - p[1]))

    return (a, b) if border(a) <= border(b) else (b, a)


@dataclass(frozen=True, eq=False)
class NeedleDetection:
    """A needle found in a 2D frame, in that frame's pixel coordinates.

    Attributes:
        tip_ij: (2,) float64, (column i, row j) of the tip, pixels.
        hub_ij: (2,) float64, the other visible end (towards the hub), pixels.
        axis_ij: (2,) float64 unit vector, hub -> tip.
        length_px: visible length, pixels.
        inliers: number of ridge pixels on the line.
        score: mean normalised ridge response of the inliers (higher = clearer).
        confidence: in [0, 1], from length and inlier support.
    """

    tip_ij: F64
    hub_ij: F64
    axis_ij: F64
    length_px: float
    inliers: int
    score: float
    confidence: float


class RidgeNeedleDetector:
    """Find the needle as the dominant straight ridge in a frame.

    Args:
        polarity: ``"bright"`` (ultrasound) or ``"dark"`` (fluoroscopy display).
        sigma_px: Gaussian scale of the ridge filter, about the needle half-width, px.
        max_points: strongest ridge pixels kept for the line fit.
        ransac_iters: RANSAC hypotheses per frame.
        inlier_px: distance to the line within which a pixel is an inlier, px.
        min_length_px: shorter lines are not reported, px.
        max_gap_px: largest gap inside the visible needle, px.
        threshold_sigmas: a pixel is a ridge candidate when its response exceeds
            median + this many robust standard deviations (MAD).
        seed: seed of the RANSAC sampler (deterministic per detector).
    """

    def __init__(
        self,
        polarity: str = "bright",
        sigma_px: float = 1.5,
        max_points: int = 800,
        ransac_iters: int = 150,
        inlier_px: float = 1.5,
        min_length_px: float = 20.0,
        max_gap_px: float = 12.0,
        threshold_sigmas: float = 6.0,
        seed: int = 0,
    ) -> None:
        if polarity not in ("bright", "dark"):
            raise ValueError(f"polarity must be 'bright' or 'dark', got {polarity!r}")
        for name, val in (("sigma_px", sigma_px), ("inlier_px", inlier_px),
                          ("min_length_px", min_length_px), ("max_gap_px", max_gap_px)):
            if not val > 0:
                raise ValueError(f"{name} must be > 0, got {val}")
        if max_points < 10 or ransac_iters < 1:
            raise ValueError(
                f"need max_points >= 10 and ransac_iters >= 1, got {max_points}, {ransac_iters}"
            )
        self.polarity = polarity
        self.sigma_px = sigma_px
        self.max_points = max_points
        self.ransac_iters = ransac_iters
        self.inlier_px = inlier_px
        self.min_length_px = min_length_px
        self.max_gap_px = max_gap_px
        self.threshold_sigmas = threshold_sigmas
        self._rng = np.random.default_rng(seed)
        self._shape: tuple[int, int] | None = None

    def _alloc(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        self._smooth = np.empty(shape, np.float32)
        self._ixx = np.empty(shape, np.float32)
        self._iyy = np.empty(shape, np.float32)
        self._ixy = np.empty(shape, np.float32)
        self.response = np.empty(shape, np.float32)

    def ridge_response(self, image: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Ridge strength per pixel (>= 0), same shape as ``image`` (2D float32 view of an
        internal buffer, overwritten on the next call)."""
        if image.ndim != 2:
            raise ValueError(f"image must be 2D (rows, cols), got shape {image.shape}")
        shape = (int(image.shape[0]), int(image.shape[1]))
        if shape != self._shape:
            self._alloc(shape)
        src = image if image.dtype == np.float32 else image.astype(np.float32)
        cv2.GaussianBlur(src, (0, 0), self.sigma_px, dst=self._smooth)
        cv2.Sobel(self._smooth, cv2.CV_32F, 2, 0, dst=self._ixx, ksize=3)
        cv2.Sobel(self._smooth, cv2.CV_32F, 0, 2, dst=self._iyy, ksize=3)
        cv2.Sobel(self._smooth, cv2.CV_32F, 1, 1, dst=self._ixy, ksize=3)
        # Eigenvalues of [[Ixx, Ixy], [Ixy, Iyy]]: (tr -+ sqrt((Ixx-Iyy)^2 + 4 Ixy^2)) / 2.
        # A bright ridge has a strongly negative eigenvalue across it.
        r = self.response
        np.subtract(self._ixx, self._iyy, out=r)
        np.multiply(r, r, out=r)
        np.multiply(self._ixy, self._ixy, out=self._ixy)
        np.multiply(self._ixy, 4.0, out=self._ixy)
        np.add(r, self._ixy, out=r)
        np.sqrt(r, out=r)
        np.add(self._ixx, self._iyy, out=self._ixx)  # trace
        if self.polarity == "bright":
            np.subtract(r, self._ixx, out=r)  # -(tr - sqrt) = -2 * lambda_min
        else:
            np.add(r, self._ixx, out=r)  # tr + sqrt = 2 * lambda_max
        np.maximum(r, 0.0, out=r)
        # Image borders (detector edges, collimation, padding) are not needles.
        b = max(2, round(2 * self.sigma_px))
        r[:b, :] = 0.0
        r[-b:, :] = 0.0
        r[:, :b] = 0.0
        r[:, -b:] = 0.0
        return r

    def detect(
        self, image: npt.NDArray[np.floating], hub_hint_ij: npt.ArrayLike | None = None
    ) -> NeedleDetection | None:
        """Detect the needle in a 2D image (rows, cols).

        Args:
            image: 2D intensity image, any scale.
            hub_hint_ij: (2,) a point on the hub side (e.g. the planned entry projected
                into the frame, or the previous hub). Without it the end nearer the image
                border is taken as the hub.

        Returns:
            The detection, or ``None`` when no line is long and clear enough.
        """
        resp = self.ridge_response(image)
        flat = resp.ravel()
        n_keep = min(self.max_points, flat.size)
        idx = np.argpartition(flat, flat.size - n_keep)[flat.size - n_keep :]
        vals = flat[idx]
        # Robust threshold from a strided sample of the whole frame.
        sample = flat[:: max(1, flat.size // 4096)]
        med = float(np.median(sample))
        mad = float(np.median(np.abs(sample - med))) * 1.4826 + 1e-6
        thr = med + self.threshold_sigmas * mad
        keep = vals > thr
        if int(keep.sum()) < 10:
            return None
        idx, vals = idx[keep], vals[keep]
        cols = resp.shape[1]
        pts = np.empty((idx.size, 2), np.float64)
        pts[:, 0] = idx % cols
        pts[:, 1] = idx // cols
        w = vals.astype(np.float64)

        best = self._ransac(pts, w)
        if best is None:
            return None
        inl = best
        p_in, w_in = pts[inl], w[inl]
        # Total least squares refinement (weighted PCA).
        c = (p_in * w_in[:, None]).sum(0) / w_in.sum()
        d = p_in - c
        cov = (d * w_in[:, None]).T @ d
        _evals, evecs = np.linalg.eigh(cov)
        u = evecs[:, 1]
        # Re-select inliers against the refined line, then find the longest gap-free run.
        dist = np.abs(d @ np.array([-u[1], u[0]]))
        on = dist <= self.inlier_px
        t = np.sort(d[on] @ u)
        if t.size < 10:
            return None
        gaps = np.diff(t)
        breaks = np.flatnonzero(gaps > self.max_gap_px)
        starts = np.concatenate(([0], breaks + 1))
        ends = np.concatenate((breaks, [t.size - 1]))
        k = int(np.argmax(t[ends] - t[starts]))
        t0, t1 = float(t[starts[k]]), float(t[ends[k]])
        length = t1 - t0
        if length < self.min_length_px:
            return None
        a, b = c + t0 * u, c + t1 * u
        n_run = int(ends[k] - starts[k] + 1)
        hub, tip = orient_ends(a, b, resp.shape, hub_hint_ij)
        axis = (tip - hub) / max(length, 1e-9)
        score = float(w[inl].mean() / (thr + 1e-6))
        support = min(1.0, n_run / max(length, 1.0))  # fraction of the run covered
        conf = float(np.clip(support * min(1.0, length / (3 * self.min_length_px)), 0.0, 1.0))
        return NeedleDetection(tip, hub, axis, length, n_run, score, conf)

    def _ransac(self, pts: F64, w: F64) -> npt.NDArray[np.bool_] | None:
        n = pts.shape[0]
        i = self._rng.integers(0, n, self.ransac_iters)
        j = self._rng.integers(0, n, self.ransac_iters)
        p, q = pts[i], pts[j]
        v = q - p
        norm = np.linalg.norm(v, axis=1)
        ok = norm > 3.0
        if not ok.any():
            return None
        p, v, norm = p[ok], v[ok], norm[ok]
        nrm = np.stack([-v[:, 1], v[:, 0]], axis=1) / norm[:, None]  # (H, 2) line normals
        # Distances of every point to every hypothesis: (H, N).
        dist = np.abs(pts @ nrm.T - (p * nrm).sum(1)[None, :]).T
        support = ((dist <= self.inlier_px) * w[None, :]).sum(1)
        h = int(np.argmax(support))
        inl = dist[h] <= self.inlier_px
        if int(inl.sum()) < 10:
            return None
        return inl
