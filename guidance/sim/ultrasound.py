"""Simulated linear-probe B-mode ultrasound with an in-plane needle, nerve and vessel.

Model (per sequence, precomputed): an echogenicity map of tissue layers (skin, fat with
septa, fascia, fibrillar muscle, deep fascia, deep tissue), a nerve (hypoechoic
fascicles in a hyperechoic epineurium: the "honeycomb"), a vessel (anechoic lumen,
bright wall). Speckle is the envelope of complex Gaussian scatterers weighted by the
echogenicity and convolved with a separable Gaussian PSF (baseband model; Rayleigh
amplitude statistics). Round-trip attenuation is integrated down each beam line from a
per-pixel attenuation map (the fluid lumen attenuates little: posterior enhancement),
then time-gain compensation, gain and log compression to 8 bits.

Per frame: speckle decorrelation (two fixed fields mixed by an angle that grows with
time), the needle's specular double-wall echo with its comet-tail reverberation lines
below it (spacing: the wall-to-wall distance), its acoustic shadow, electronic noise
(a random crop of a pre-drawn noise field). Only the needle's bounding region is
recomputed.

Frames: the probe frame has x along the array (increasing column i), y along the beam
(depth, increasing row j), z = x cross y (elevation); origin at the centre of the
transducer face. Pixel (i, j) is at x = (i - (n-1)/2) * s, y = (j + 0.5) * s, s =
depth / n.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.sim.frames import US_LABELS, SimFrame, SimTruth
from guidance.sim.needle_path import NeedlePath, needle_pose
from guidance.sim.params import UltrasoundParams

__all__ = ["DEFAULT_PROBE_TO_LPS", "SceneStructure", "UltrasoundScanner"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: ProbeToReference used by default: probe on the patient's back, left paramedian at the
#: upper lumbar level, array along patient left (+x), beam anterior (-y), elevation
#: inferior (-z). The tissue model is synthetic; this pose only places it in LPS.
DEFAULT_PROBE_TO_LPS: F64 = np.array(
    [
        [1.0, 0.0, 0.0, 70.0],
        [0.0, -1.0, 0.0, 135.0],
        [0.0, 0.0, -1.0, -290.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

_NP_PER_DB = math.log(10.0) / 20.0  # amplitude nepers per dB
_TGC_MAX_DB = 40.0


def _ellipse_r(dx: np.ndarray, dy: np.ndarray, radii: tuple[float, float]) -> np.ndarray:
    """Normalised elliptical radius (1 on the boundary)."""
    return np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2)


#: Points on a unit circle that sample an ellipse's boundary (0.25 degree apart: the
#: distance to the sampled boundary is within 0.01 mm of the exact one for radii <= 6 mm).
_RIM = np.stack([np.cos(np.linspace(0.0, 2.0 * math.pi, 1440, endpoint=False)),
                 np.sin(np.linspace(0.0, 2.0 * math.pi, 1440, endpoint=False))], axis=1)


@dataclass(frozen=True)
class SceneStructure:
    """A structure of the simulated scene, in the image plane: the ground truth of its
    label (an axis-aligned ellipse) in the probe frame.

    Attributes:
        name: ``"nerve"`` or ``"vessel"`` (the class names of ``US_LABELS``).
        label: its class id in :attr:`SimTruth.labels`.
        centre_mm: (x, y) centre in the probe frame (x along the array, y depth), mm.
        radii_mm: (lateral, axial) semi-axes, mm (the vessel: its lumen).
    """

    name: str
    label: int
    centre_mm: tuple[float, float]
    radii_mm: tuple[float, float]

    def signed_distance_mm(self, xy_mm: npt.ArrayLike) -> F64:
        """Signed distance from points of the image plane to the structure's boundary,
        mm (negative inside).

        Args:
            xy_mm: (N, 2) or (2,) probe-frame (x, y) positions, mm.

        Returns:
            (N,) distances (a float array also for one point).
        """
        pts = np.atleast_2d(np.asarray(xy_mm, np.float64))
        if pts.shape[1] != 2:
            raise ValueError(f"xy_mm must be (N, 2), got shape {pts.shape}")
        c = np.asarray(self.centre_mm, np.float64)
        rim = c + _RIM * np.asarray(self.radii_mm, np.float64)
        d = np.sqrt(((pts[:, None, :] - rim[None]) ** 2).sum(axis=2)).min(axis=1)
        inside = _ellipse_r(pts[:, 0] - c[0], pts[:, 1] - c[1], self.radii_mm) <= 1.0
        out: F64 = np.where(inside, -d, d)
        return out


class UltrasoundScanner:
    """B-mode frames of a synthetic nerve-block scene with an in-plane needle.

    Attributes:
        modality: ``"us"``.
        params: the parameters.
        size: pixels per side.
        seed: seed of the anatomy texture, speckle, noise and drift.
        spacing_mm: pixel spacing (square pixels), mm.
        probe_to_lps: (4, 4) ProbeToReference.
        path: planned path and needle motion (replace it to script the needle:
            :func:`guidance.sim.scenario.us_scenario_path`).
        entry_lps, target_lps: (3,) planned path, LPS mm.
        entry_probe, target_probe: (3,) the same in the probe frame, mm.
        nerve, vessel: the scene's ground truth (:class:`SceneStructure`).
        fov_entry_mm: inserted length at which the planned line enters the field of
            view, mm (0 when the skin entry is under the probe).
    """

    modality = "us"

    def __init__(
        self, params: UltrasoundParams, size: int, seed: int, probe_to_lps: F64 | None = None
    ) -> None:
        if not isinstance(params, UltrasoundParams):
            raise TypeError(f"params must be UltrasoundParams, got {type(params).__name__}")
        self.params = p = params
        self.size = n = int(size)
        self.seed = int(seed)
        self.spacing_mm = s = p.depth_mm / n
        self.probe_to_lps: F64 = (
            DEFAULT_PROBE_TO_LPS.copy()
            if probe_to_lps is None
            else np.asarray(probe_to_lps, np.float64)
        )
        image_to_probe = np.array(
            [
                [s, 0.0, 0.0, -(n - 1) / 2.0 * s],
                [0.0, s, 0.0, 0.5 * s],
                [0.0, 0.0, p.elevation_thickness_mm, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        self._ijk_to_lps = self.probe_to_lps @ image_to_probe
        self._lps_to_ijk = np.linalg.inv(self._ijk_to_lps)
        rng = np.random.default_rng([self.seed, 1])
        self._build_scene(rng)
        self._plan_path(rng)

    # ----------------------------------------------------------------- scene, once
    def _build_scene(self, rng: np.random.Generator) -> None:
        p, n, s = self.params, self.size, self.spacing_mm
        x = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s)[None, :]
        y = ((np.arange(n, dtype=np.float32) + 0.5) * s)[:, None]
        X = np.broadcast_to(x, (n, n))
        Y = np.broadcast_to(y, (n, n))

        def smooth_noise(sigma_y_mm: float, sigma_x_mm: float) -> F32:
            raw = rng.standard_normal((n, n)).astype(np.float32)
            f = np.asarray(
                cv2.GaussianBlur(
                    raw, (0, 0), sigmaX=max(sigma_x_mm / s, 0.3), sigmaY=max(sigma_y_mm / s, 0.3)
                ),
                dtype=np.float32,
            )
            return f / np.float32(max(float(f.std()), 1e-6))

        def wavy(base: float, amp: float) -> F32:
            k1, k2 = rng.uniform(0.05, 0.2, size=2)
            ph1, ph2 = rng.uniform(0, 2 * math.pi, size=2)
            return (
                base
                + amp
                * (
                    np.sin(2 * math.pi * k1 * x / 10 + ph1)
                    + 0.5 * np.sin(2 * math.pi * k2 * x / 3 + ph2)
                )
            ).astype(np.float32)

        def line(depth: np.ndarray | float, width_mm: float) -> F32:
            return np.exp(-0.5 * ((Y - depth) / width_mm) ** 2).astype(np.float32)

        fat_bottom = wavy(p.fat_mm, 0.6)
        muscle_bottom = fat_bottom + wavy(p.muscle_mm, 1.0)
        echo = np.empty((n, n), np.float32)
        spec = np.zeros((n, n), np.float32)  # coherent (specular) component
        # Deep tissue, then overwrite shallower layers.
        echo[:] = 0.75 + 0.25 * smooth_noise(2.0, 2.0)
        muscle = (Y >= fat_bottom) & (Y < muscle_bottom)
        fibres = smooth_noise(0.12, 4.0)
        fibres = np.clip(fibres, 0.0, None) ** 2
        echo[muscle] = (0.35 + 0.55 * fibres + 0.1 * smooth_noise(3.0, 3.0))[muscle]
        fat = Y < fat_bottom
        echo[fat] = (0.32 + 0.1 * smooth_noise(1.5, 3.0))[fat]
        for _ in range(int(rng.integers(2, 5))):  # fat septa
            d = wavy(float(rng.uniform(1.5, max(p.fat_mm - 0.5, 1.6))), 0.4)
            echo += np.where(fat, 1.3 * line(d, 0.08), 0.0).astype(np.float32)
        skin = Y < 1.2
        echo[skin] = 1.6
        spec += (
            1.8 * line(fat_bottom, 0.15) + 1.4 * line(muscle_bottom, 0.18) + 0.8 * line(0.15, 0.1)
        )
        echo += 1.5 * line(fat_bottom, 0.2) + 1.2 * line(muscle_bottom, 0.25)
        alpha_db = np.full((n, n), p.attenuation_db_cm_mhz * p.frequency_mhz / 10.0, np.float32)
        alpha_db[fat] *= 1.2
        labels = np.zeros((n, n), np.uint8)

        # Nerve: honeycomb of hypoechoic fascicles inside a hyperechoic epineurium.
        side = 1.0 if p.needle_from_left else -1.0
        self.nerve_centre_mm = nc = (p.nerve_x_mm, p.nerve_depth_mm)
        rn = _ellipse_r(X - nc[0], Y - nc[1], p.nerve_radii_mm)
        inside_n = rn <= 1.0
        nerve_echo = np.full((n, n), 2.2, np.float32)
        a, b = p.nerve_radii_mm
        fas_r = float(np.clip(0.22 * min(a, b), 0.25, 0.9))
        centres: list[tuple[float, float]] = []
        for _ in range(400):
            if len(centres) >= 40:
                break
            u, v = rng.uniform(-1, 1, size=2)
            if u * u + v * v > (1 - fas_r / min(a, b)) ** 2 * 0.9:
                continue
            cx, cy = nc[0] + u * a, nc[1] + v * b
            r_i = fas_r * float(rng.uniform(0.7, 1.2))
            if all(
                (cx - ox) ** 2 + (cy - oy) ** 2 > (r_i + fas_r + 0.12) ** 2 for ox, oy in centres
            ):
                centres.append((cx, cy))
                d2 = ((X - cx) ** 2 + (Y - cy) ** 2) / r_i**2
                nerve_echo = np.minimum(
                    nerve_echo, (0.08 + 2.12 * np.clip(d2, 0, 1) ** 3).astype(np.float32)
                )
        echo[inside_n] = nerve_echo[inside_n]
        spec[inside_n] = 0.0
        rim = np.exp(-0.5 * ((rn - 1.0) * min(a, b) / 0.2) ** 2).astype(np.float32)
        echo += 1.8 * rim
        spec += 0.8 * rim
        labels[inside_n] = 2
        self.nerve = SceneStructure("nerve", 2, (float(nc[0]), float(nc[1])),
                                    (float(a), float(b)))

        # Vessel: anechoic lumen, bright wall, low attenuation (posterior enhancement).
        vc = (nc[0] + side * p.vessel_offset_mm[0], nc[1] + p.vessel_offset_mm[1])
        rv = _ellipse_r(X - vc[0], Y - vc[1], p.vessel_radii_mm)
        lumen = rv <= 1.0
        echo[lumen] = 1e-4
        wall = np.exp(-0.5 * ((rv - 1.0) * min(p.vessel_radii_mm) / 0.18) ** 2).astype(np.float32)
        echo += np.where(lumen, 0.0, 1.6 * wall).astype(np.float32)
        spec += np.where(lumen, 0.0, 0.6 * wall).astype(np.float32)
        spec[lumen] = 0.0
        alpha_db[lumen] *= 0.05
        labels[lumen] = 3
        self._labels_static = labels
        self.vessel = SceneStructure("vessel", 3, (float(vc[0]), float(vc[1])),
                                     (float(p.vessel_radii_mm[0]), float(p.vessel_radii_mm[1])))

        # Speckle: two independent complex scatterer fields, each PSF-filtered.
        sig = (max(p.psf_lateral_mm / s, 0.3), max(p.psf_axial_mm / s, 0.3))
        amp = np.sqrt(np.clip(echo, 0.0, None))
        norm = math.sqrt(4.0 * math.pi * sig[0] * sig[1])  # keeps <|S|^2> = echo

        def speckle() -> npt.NDArray[np.complex64]:
            re = cv2.GaussianBlur(
                rng.standard_normal((n, n)).astype(np.float32) * amp, (0, 0), sig[0], sigmaY=sig[1]
            )
            im = cv2.GaussianBlur(
                rng.standard_normal((n, n)).astype(np.float32) * amp, (0, 0), sig[0], sigmaY=sig[1]
            )
            return (re + 1j * im).astype(np.complex64) * np.float32(norm / math.sqrt(2.0))

        self._speckle_a = speckle()
        self._speckle_b = speckle()
        spec_b = cv2.GaussianBlur(spec, (0, 0), sig[0], sigmaY=sig[1])
        self._specular = spec_b.astype(np.float32)

        # Round-trip attenuation down each beam line (column), TGC, gain.
        alpha_np = (alpha_db * np.float32(_NP_PER_DB * 2.0 * s)).astype(np.float32)
        atten = np.exp(-(np.cumsum(alpha_np, axis=0) - 0.5 * alpha_np))
        alpha0 = p.attenuation_db_cm_mhz * p.frequency_mhz / 10.0
        # TGC amplifiers saturate: cap the compensation (it also amplifies the noise).
        tgc_db = np.minimum(p.tgc_fraction * alpha0 * 2.0 * y, _TGC_MAX_DB)
        tgc = (10.0 ** (tgc_db / 20.0)).astype(np.float32)
        gain = 10.0 ** (p.gain_db / 20.0)
        # White level: tissue of echogenicity 1 sits 38 dB below it (dark grey at 60 dB).
        self._white = np.float32(10.0 ** (38.0 / 20.0))
        self._tissue_gain = (atten * tgc * gain).astype(np.float32)
        self._tgc_gain = (tgc * gain).astype(np.float32)
        noise_amp = 10.0 ** (p.noise_db / 20.0)
        bank = rng.standard_normal((2, 2 * n, 2 * n)).astype(np.float32)
        self._noise_bank = (
            np.hypot(bank[0], bank[1]) * np.float32(noise_amp / math.sqrt(2.0))
        ).astype(np.float32)
        footprint_cols = np.abs(x[0]) <= p.footprint_mm / 2.0
        self._footprint = footprint_cols
        self._X, self._Y = x, y

    def _plan_path(self, rng: np.random.Generator) -> None:
        p = self.params
        d = self._needle_direction()
        nc = np.array(self.nerve_centre_mm)
        r_along = 1.0 / math.hypot(d[0] / p.nerve_radii_mm[0], d[1] / p.nerve_radii_mm[1])
        self._set_line(nc - (r_along + p.target_gap_mm) * d)
        # Drift axis: in-plane rotation is about the elevation axis; a random sign.
        rot = self.probe_to_lps[:3, :3]
        z_lps = rot[:, 2]
        plan = (self.target_lps - self.entry_lps) / np.linalg.norm(self.target_lps - self.entry_lps)
        w_lps = np.cross(z_lps, plan)
        beta = math.radians(float(rng.uniform(0.0, 25.0)))  # mostly in-plane, a little out
        sgn = 1.0 if rng.random() < 0.5 else -1.0
        axis = sgn * (
            math.cos(beta) * z_lps + math.sin(beta) * w_lps * (1.0 if rng.random() < 0.5 else -1.0)
        )
        self._set_default_path(axis)

    def _needle_direction(self) -> F64:
        """(2,) unit in-plane direction of the planned needle (probe x, y), skin -> deep."""
        p = self.params
        side = 1.0 if p.needle_from_left else -1.0
        ang = math.radians(p.needle_angle_deg)
        return np.array([side * math.cos(ang), math.sin(ang)])

    def _set_line(self, target_xy: F64) -> None:
        """The planned line to ``target_xy`` (probe x, y mm) at the needle's angle, its
        skin entry (depth 0) and where it enters the field of view."""
        p = self.params
        d = self._needle_direction()
        target = np.asarray(target_xy, np.float64)
        entry = target - (target[1] / d[1]) * d  # on the skin (depth 0)
        self.target_probe = np.array([target[0], target[1], 0.0])
        self.entry_probe = np.array([entry[0], 0.0, 0.0])
        self.entry_lps: F64 = self._probe_to_lps_pt(self.entry_probe)
        self.target_lps: F64 = self._probe_to_lps_pt(self.target_probe)
        # The needle's start depth counts from where the planned line enters the field of
        # view (a steep or shallow plan may start the skin entry well outside it).
        half_w = min(p.footprint_mm / 2.0, (self.size - 1) / 2.0 * self.spacing_mm)
        self.fov_entry_mm = max(0.0, (abs(entry[0]) - half_w) / abs(d[0]))

    def _set_default_path(self, drift_axis_lps: F64) -> None:
        p = self.params
        plan_len = float(np.linalg.norm(self.target_probe - self.entry_probe))
        start = min(p.needle.start_depth_mm + self.fov_entry_mm, plan_len)
        self.path = NeedlePath(
            entry_lps=self.entry_lps,
            target_lps=self.target_lps,
            needle=dataclasses.replace(p.needle, start_depth_mm=start),
            drift_axis_lps=drift_axis_lps,
        )

    def aim_at(self, target_xy_mm: npt.ArrayLike) -> None:
        """Plan the needle toward another target of the image plane: the line to it at
        the needle's angle (``params.needle_angle_deg``, from the needle's side), the
        default motion along it (a scripted path may replace :attr:`path` afterwards).

        Args:
            target_xy_mm: (2,) probe-frame (x, y) of the target, mm (see
                :meth:`px_to_probe_mm` for a pixel).

        Raises:
            ValueError: the target is not finite, less than 2 mm deep, or outside the
                image (footprint and depth).
        """
        t = np.asarray(target_xy_mm, np.float64).reshape(-1)
        if t.shape != (2,) or not np.all(np.isfinite(t)):
            raise ValueError(f"target_xy_mm must be 2 finite numbers, got {target_xy_mm!r}")
        p = self.params
        half_w = min(p.footprint_mm / 2.0, (self.size - 1) / 2.0 * self.spacing_mm)
        if not (2.0 <= t[1] <= p.depth_mm and abs(t[0]) <= half_w):
            raise ValueError(
                f"the target ({t[0]:.1f}, {t[1]:.1f}) mm is outside the image: lateral "
                f"within +-{half_w:.1f} mm, depth 2..{p.depth_mm:.0f} mm")
        self._set_line(t)
        self._set_default_path(self.path.drift_axis_lps)

    def px_to_probe_mm(self, u: float, v: float) -> F64:
        """Pixel (column ``u``, row ``v``) of a frame -> (2,) probe-frame (x, y), mm."""
        n, s = self.size, self.spacing_mm
        return np.array([(float(u) - (n - 1) / 2.0) * s, (float(v) + 0.5) * s])

    def probe_mm_to_px(self, xy_mm: npt.ArrayLike) -> F64:
        """(N, 2) or (2,) probe-frame (x, y), mm -> the same shape of pixel (column, row)."""
        n, s = self.size, self.spacing_mm
        xy = np.asarray(xy_mm, np.float64)
        out: F64 = np.stack([xy[..., 0] / s + (n - 1) / 2.0, xy[..., 1] / s - 0.5], axis=-1)
        return out

    def lps_to_probe(self, points_lps: npt.ArrayLike) -> F64:
        """(N, 3) or (3,) LPS mm -> the same shape in the probe frame, mm (z: elevation,
        out of the image plane)."""
        pts = np.asarray(points_lps, np.float64)
        return self._lps_to_probe(pts.reshape(-1, 3)).reshape(pts.shape)

    @property
    def target_px(self) -> F64:
        """(2,) the planned target as a pixel (column, row) of the frames."""
        return self.probe_mm_to_px(self.target_probe[:2])

    @property
    def structures(self) -> tuple[SceneStructure, SceneStructure]:
        """The nerve and the vessel (ground truth of the labels 2 and 3)."""
        return (self.nerve, self.vessel)

    def _probe_to_lps_pt(self, q: F64) -> F64:
        return self.probe_to_lps[:3, :3] @ q + self.probe_to_lps[:3, 3]

    def _lps_to_probe(self, pts: F64) -> F64:
        inv = np.linalg.inv(self.probe_to_lps)
        return pts @ inv[:3, :3].T + inv[:3, 3]

    # ----------------------------------------------------------------- per frame
    def frame(self, index: int, t_s: float) -> SimFrame:
        """Frame ``index`` at simulation time ``t_s``; deterministic given seed, index, t_s."""
        p, n, s = self.params, self.size, self.spacing_mm
        state = self.path.state(t_s)
        rng = np.random.default_rng([self.seed, int(index)])
        phi = p.speckle_decorrelation_rad_s * float(t_s)
        sp = self._speckle_a * np.float32(math.cos(phi)) + self._speckle_b * np.float32(
            math.sin(phi)
        )
        env = np.abs(sp) + self._specular
        labels = self._labels_static.copy()

        hub_q, tip_q = self._lps_to_probe(np.stack([state.hub_lps, state.tip_lps]))
        r = p.needle.diameter_mm / 2.0
        seg = tip_q[:2] - hub_q[:2]
        seg_len = float(np.linalg.norm(seg))
        needle_env = None
        if seg_len > 1e-6:
            u_hat = seg / seg_len
            n_hat = np.array([-u_hat[1], u_hat[0]])
            if n_hat[1] < 0:
                n_hat = -n_hat  # perpendicular pointing deeper
            cos_t = abs(u_hat[0])  # angle of the needle to the transducer face
            # Bounding box of the in-image shaft plus the comet tail and shadow below it.
            n_rev = 6
            r + (n_rev + 1) * 2.0 * r / max(cos_t, 0.2) + 4 * p.psf_axial_mm
            xs = (hub_q[0], tip_q[0])
            ys = (hub_q[1], tip_q[1])
            i0 = int(max(math.floor((min(xs) - 1.0) / s + (n - 1) / 2.0), 0))
            i1 = int(min(math.ceil((max(xs) + 1.0) / s + (n - 1) / 2.0) + 1, n))
            j0 = int(max(math.floor((min(ys) - 1.0) / s - 0.5), 0))
            if i0 < i1 and j0 < n:
                Xw = self._X[:, i0:i1]
                Yw = self._Y[j0:, :]
                dx = Xw - np.float32(hub_q[0])
                dy = Yw - np.float32(hub_q[1])
                along = dx * np.float32(u_hat[0]) + dy * np.float32(u_hat[1])  # mm from hub
                perp = dx * np.float32(n_hat[0]) + dy * np.float32(n_hat[1])  # + deeper
                # Position along the shaft of the needle point straight above (same
                # beam line): echoes, reverberation and shadow are in its beam line.
                along_v = dx / np.float32(u_hat[0] if abs(u_hat[0]) > 1e-3 else 1e-3)
                frac = np.clip(along_v / seg_len, 0.0, 1.0)
                z_at = np.float32(hub_q[2]) + frac * np.float32(tip_q[2] - hub_q[2])
                sig_e = p.elevation_thickness_mm / 2.0
                # Elevational weight: the shaft is seen where it lies in the slice.
                w = np.exp(-0.5 * (z_at / sig_e) ** 2)
                y_needle = np.float32(hub_q[1]) + frac * np.float32(tip_q[1] - hub_q[1])
                on_shaft = (along_v >= 0.0) & (along_v <= seg_len) & (y_needle > 0.0)
                w = np.where(on_shaft, w, 0.0).astype(np.float32)
                sig = max(p.psf_axial_mm, 0.6 * s)
                spec_k = cos_t**2  # specular echo falls with steeper insertion
                amp = np.float32(p.needle_echo * spec_k) * w
                prof = np.exp(-0.5 * ((perp + r) / sig) ** 2)  # top wall
                for k in range(1, n_rev + 1):  # lower wall, then the comet tail
                    dk = perp + r - 2.0 * r * k
                    prof += np.float32(p.reverberation_decay**k) * np.exp(-0.5 * (dk / sig) ** 2)
                needle_env = amp * prof
                # Acoustic shadow: deeper than the shaft in the same beam lines.
                below = np.clip((perp - r) / (2.0 * sig), 0.0, 1.0)
                loss = np.exp(-np.float32(p.shadow_db * _NP_PER_DB) * below * w)
                env_w = env[j0:, i0:i1]
                env_w *= loss
                env_w += needle_env * loss ** np.float32(0.3)
                lab_w = labels[j0:, i0:i1]
                shaft = (np.abs(perp) <= max(r, 0.5 * s)) & (along >= 0.0) & (along <= seg_len)
                lab_w[shaft & (w >= 0.5)] = 1

        noise_off = rng.integers(0, n, size=2)
        noise = self._noise_bank[noise_off[0] : noise_off[0] + n, noise_off[1] : noise_off[1] + n]
        out = env * self._tissue_gain + noise * self._tgc_gain
        db = 20.0 * np.log10(np.maximum(out / self._white, 1e-6))
        img = np.clip(
            (db + np.float32(p.dynamic_range_db)) * np.float32(255.0 / p.dynamic_range_db), 0, 255
        )
        img8 = img.astype(np.uint8)
        img8[:, ~self._footprint] = 0
        labels[:, ~self._footprint] = 0

        tip_ijk = self._lps_to_ijk[:3, :3] @ state.tip_lps + self._lps_to_ijk[:3, 3]
        hub_ijk = self._lps_to_ijk[:3, :3] @ state.hub_lps + self._lps_to_ijk[:3, 3]
        axis_ij = tip_ijk[:2] - hub_ijk[:2]
        nrm = float(np.linalg.norm(axis_ij))
        axis_ij = axis_ij / nrm if nrm > 1e-9 else np.full(2, np.nan)
        in_plane = abs(tip_q[2]) <= p.elevation_thickness_mm / 2.0
        in_image = bool(np.all(tip_ijk[:2] >= -0.5) and np.all(tip_ijk[:2] <= n - 0.5))
        in_fp = abs(tip_q[0]) <= p.footprint_mm / 2.0
        in_view = bool(in_plane and in_image and in_fp)
        truth = SimTruth(
            labels=labels,
            label_names=US_LABELS,
            tip_ij=tip_ijk[:2].copy() if in_view else np.full(2, np.nan),
            axis_ij=axis_ij,
            tip_lps=state.tip_lps,
            axis_lps=state.axis_lps,
            needle_in_view=in_view,
        )
        return SimFrame(
            index=int(index),
            t_s=float(t_s),
            image=ImageVolume(voxels=img8[None], ijk_to_lps=self._ijk_to_lps.copy()),
            poses={
                "NeedleTipToReference": needle_pose(state),
                "ProbeToReference": self.probe_to_lps.copy(),
            },
            truth=truth,
        )
