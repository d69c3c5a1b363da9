"""Typed, validated parameters of the simulated scanner, and their random sampling.

The parameters are frozen dataclasses so that a training set can record exactly what
produced each frame; :func:`sample_params` draws them for domain randomisation (gain,
depth, noise, needle gauge and angle, anatomy placement, C-arm angles) from a passed-in
``np.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FLUORO_LATERAL_FRACTION",
    "FLUORO_SURVEY_FRACTION",
    "FLUORO_TRAIN_LEVELS",
    "GAUGE_DIAMETER_MM",
    "FluoroParams",
    "NeedleParams",
    "UltrasoundParams",
    "needle_diameter_mm",
    "sample_params",
]

#: Outer diameter (mm) of common needle gauges (ISO 9626 nominal values).
GAUGE_DIAMETER_MM: dict[int, float] = {
    16: 1.65,
    17: 1.47,
    18: 1.27,
    19: 1.07,
    20: 0.91,
    21: 0.82,
    22: 0.72,
    23: 0.64,
    25: 0.51,
    27: 0.41,
}


def needle_diameter_mm(gauge: int) -> float:
    """Outer diameter in mm of a needle of this gauge.

    Raises:
        ValueError: gauge not in :data:`GAUGE_DIAMETER_MM`.
    """
    if gauge not in GAUGE_DIAMETER_MM:
        raise ValueError(f"gauge must be one of {sorted(GAUGE_DIAMETER_MM)}, got {gauge}")
    return GAUGE_DIAMETER_MM[gauge]


def check_number(name: str, value: object, lo: float, hi: float) -> float:
    """``value`` as a float, checked to be a real number (not bool, not NaN) in
    [lo, hi]; the error names ``name``.

    Raises:
        TypeError: not a number.
        ValueError: NaN or out of range.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return v


@dataclass(frozen=True)
class NeedleParams:
    """How the needle moves.

    Attributes:
        speed_mm_s: insertion speed along the needle axis, mm/s.
        drift_deg_s: rate at which the needle's angle deviates from the plan, degrees per
            second of insertion (0: stays on the planned line). The deviation grows
            linearly and is capped at ``max_drift_deg``.
        max_drift_deg: cap on the angular deviation, degrees.
        gauge: needle gauge (outer diameter from :data:`GAUGE_DIAMETER_MM`).
        start_depth_mm: length already inserted past the entry point at t = 0, mm.
        length_mm: shaft length from hub to tip, mm.
    """

    speed_mm_s: float = 2.0
    drift_deg_s: float = 0.0
    max_drift_deg: float = 15.0
    gauge: int = 22
    start_depth_mm: float = 5.0
    length_mm: float = 90.0

    def __post_init__(self) -> None:
        check_number("speed_mm_s", self.speed_mm_s, 0.0, 100.0)
        check_number("drift_deg_s", self.drift_deg_s, 0.0, 20.0)
        check_number("max_drift_deg", self.max_drift_deg, 0.0, 60.0)
        needle_diameter_mm(self.gauge)
        check_number("start_depth_mm", self.start_depth_mm, 0.0, 300.0)
        check_number("length_mm", self.length_mm, 10.0, 300.0)

    @property
    def diameter_mm(self) -> float:
        """Outer diameter, mm."""
        return needle_diameter_mm(self.gauge)


@dataclass(frozen=True)
class UltrasoundParams:
    """Linear-probe B-mode simulation with an in-plane (long-axis) needle.

    Geometry is in the probe frame (x lateral along the array, y depth, z elevation),
    millimetres; pixels are square with spacing ``depth_mm / size``.

    Attributes:
        depth_mm: imaging depth (image height), mm.
        footprint_mm: transducer array length; columns beyond it are black, mm.
        frequency_mhz: centre frequency (sets attenuation), MHz.
        gain_db: overall gain, dB.
        dynamic_range_db: log-compression dynamic range, dB.
        attenuation_db_cm_mhz: soft-tissue attenuation coefficient, dB/(cm MHz).
        tgc_fraction: fraction of the nominal attenuation that time-gain compensation
            restores (1: flat brightness with depth; < 1: image darkens with depth).
        psf_axial_mm: axial (along the beam) Gaussian PSF sigma, mm.
        psf_lateral_mm: lateral Gaussian PSF sigma, mm.
        noise_db: electronic noise floor relative to mean tissue echo, dB.
        speckle_decorrelation_rad_s: rate of frame-to-frame speckle change (probe
            motion, breathing), rad/s; frames 1/rate apart are about half correlated.
        elevation_thickness_mm: slice thickness; the needle is seen where it lies within
            half of it from the plane, mm.
        needle_angle_deg: insertion angle to the skin surface, degrees.
        needle_from_left: True: the needle enters from the column-0 side.
        needle_echo: brightness of the needle's specular echo relative to tissue (linear).
        reverberation_decay: amplitude ratio of successive comet-tail echoes.
        shadow_db: echo loss behind the needle (two-way), dB.
        fat_mm: subcutaneous fat thickness, mm.
        muscle_mm: muscle layer thickness below the fascia, mm.
        nerve_depth_mm: depth of the nerve centre, mm.
        nerve_x_mm: lateral position of the nerve centre from the image centre, mm.
        nerve_radii_mm: (lateral, axial) semi-axes of the nerve, mm.
        vessel_radii_mm: (lateral, axial) semi-axes of the vessel lumen, mm.
        vessel_offset_mm: (lateral, depth) offset of the vessel centre from the nerve
            centre, mm; the lateral sign is taken away from the needle side.
        target_gap_mm: the planned tip stops this far outside the nerve rim, mm.
        needle: needle motion and gauge; its ``start_depth_mm`` counts from where the
            planned line enters the field of view, not from the skin.
    """

    depth_mm: float = 40.0
    footprint_mm: float = 38.0
    frequency_mhz: float = 10.0
    gain_db: float = 0.0
    dynamic_range_db: float = 60.0
    attenuation_db_cm_mhz: float = 0.5
    tgc_fraction: float = 0.9
    psf_axial_mm: float = 0.15
    psf_lateral_mm: float = 0.45
    noise_db: float = -50.0
    speckle_decorrelation_rad_s: float = 0.3
    elevation_thickness_mm: float = 1.5
    needle_angle_deg: float = 30.0
    needle_from_left: bool = True
    needle_echo: float = 20.0
    reverberation_decay: float = 0.55
    shadow_db: float = 12.0
    fat_mm: float = 7.0
    muscle_mm: float = 10.0
    nerve_depth_mm: float = 22.0
    nerve_x_mm: float = 4.0
    nerve_radii_mm: tuple[float, float] = (4.0, 2.6)
    vessel_radii_mm: tuple[float, float] = (3.2, 2.8)
    vessel_offset_mm: tuple[float, float] = (8.5, 1.0)
    target_gap_mm: float = 1.0
    needle: NeedleParams = field(
        default_factory=lambda: NeedleParams(speed_mm_s=2.0, start_depth_mm=3.0, length_mm=80.0)
    )

    def __post_init__(self) -> None:
        check_number("depth_mm", self.depth_mm, 15.0, 120.0)
        check_number("footprint_mm", self.footprint_mm, 20.0, 80.0)
        check_number("frequency_mhz", self.frequency_mhz, 2.0, 20.0)
        check_number("gain_db", self.gain_db, -30.0, 30.0)
        check_number("dynamic_range_db", self.dynamic_range_db, 20.0, 100.0)
        check_number("attenuation_db_cm_mhz", self.attenuation_db_cm_mhz, 0.0, 2.0)
        check_number("tgc_fraction", self.tgc_fraction, 0.0, 1.5)
        check_number("psf_axial_mm", self.psf_axial_mm, 0.02, 2.0)
        check_number("psf_lateral_mm", self.psf_lateral_mm, 0.02, 3.0)
        check_number("noise_db", self.noise_db, -100.0, 0.0)
        check_number("speckle_decorrelation_rad_s", self.speckle_decorrelation_rad_s, 0.0, 50.0)
        check_number("elevation_thickness_mm", self.elevation_thickness_mm, 0.2, 10.0)
        check_number("needle_angle_deg", self.needle_angle_deg, 5.0, 80.0)
        check_number("needle_echo", self.needle_echo, 0.0, 100.0)
        check_number("reverberation_decay", self.reverberation_decay, 0.0, 0.95)
        check_number("shadow_db", self.shadow_db, 0.0, 60.0)
        check_number("fat_mm", self.fat_mm, 0.5, 60.0)
        check_number("muscle_mm", self.muscle_mm, 1.0, 80.0)
        check_number("nerve_depth_mm", self.nerve_depth_mm, 3.0, 110.0)
        check_number("nerve_x_mm", self.nerve_x_mm, -60.0, 60.0)
        for name in ("nerve_radii_mm", "vessel_radii_mm"):
            radii = getattr(self, name)
            if len(radii) != 2:
                raise ValueError(f"{name} must have 2 values, got {radii}")
            for r in radii:
                check_number(name, r, 0.5, 30.0)
        if len(self.vessel_offset_mm) != 2:
            raise ValueError(f"vessel_offset_mm must have 2 values, got {self.vessel_offset_mm}")
        check_number("target_gap_mm", self.target_gap_mm, 0.0, 20.0)
        if not isinstance(self.needle, NeedleParams):
            raise TypeError(f"needle must be NeedleParams, got {type(self.needle).__name__}")


@dataclass(frozen=True)
class FluoroParams:
    """C-arm fluoroscopy of the real CT with a needle on a posterolateral disc approach.

    The C-arm isocentre is near the disc between ``disc_levels``. Angles follow
    the clinical convention: ``lao_deg`` > 0 is LAO (detector towards the patient's
    left), < 0 RAO; ``cranial_deg`` > 0 tilts the detector towards the head, < 0 caudal.
    At (0, 0) the view is AP: source posterior, detector anterior.

    Attributes:
        lao_deg: primary angle, degrees.
        cranial_deg: secondary angle, degrees.
        sod_mm: source to isocentre distance, mm.
        sdd_mm: source to detector distance, mm.
        detector_size_mm: side of the square detector, mm (pixel pitch = this / size).
        i0_photons: unattenuated photon count per detector pixel.
        scatter_fraction: scatter added as a uniform fraction of the mean primary.
        mu_water_per_mm: linear attenuation of water at the effective energy, 1/mm.
        bone_contrast: extra attenuation factor for HU above 0 (beam-hardening aside,
            bone attenuates relatively more at fluoroscopy energies than at CT ones).
        needle_mu_per_mm: linear attenuation of the (steel) needle, 1/mm.
        invert_display: False: attenuating structures bright (radiograph convention,
            MONOCHROME2); True: dark, as many fluoroscopes show it.
        edge_enhance: unsharp-mask gain of the display processing (0: none).
        edge_sigma_mm: unsharp-mask kernel sigma, mm at the detector.
        disc_levels: the two vertebra labels around the target disc.
        approach_left: True: entry on the patient's left.
        approach_deg: angle of the path from the sagittal plane, degrees.
        target_posterior_mm: target offset posterior of the disc centre, mm.
        target_lateral_mm: target offset lateral of the disc centre (towards the entry
            side), mm.
        isocentre_cranial_mm: isocentre offset from the disc centre towards the head,
            mm (the real CT ends 45 mm below the L1/L2 disc; this keeps most of the
            field inside it). Larger offsets aim the C-arm away from the target (the
            needle then is often out of view): chest, heart and diaphragm instead of the
            lumbar spine.
        isocentre_lateral_mm: isocentre offset from the disc centre towards the
            patient's left (+x LPS), mm.
        needle: needle motion and gauge.
    """

    lao_deg: float = 0.0
    cranial_deg: float = 0.0
    sod_mm: float = 700.0
    sdd_mm: float = 1000.0
    detector_size_mm: float = 200.0
    i0_photons: float = 3.0e4
    scatter_fraction: float = 0.1
    mu_water_per_mm: float = 0.02
    bone_contrast: float = 1.3
    needle_mu_per_mm: float = 1.0
    invert_display: bool = False
    edge_enhance: float = 0.5
    edge_sigma_mm: float = 4.0
    disc_levels: tuple[str, str] = ("vertebrae_L1", "vertebrae_L2")
    approach_left: bool = True
    approach_deg: float = 45.0
    target_posterior_mm: float = 8.0
    target_lateral_mm: float = 6.0
    isocentre_cranial_mm: float = 20.0
    isocentre_lateral_mm: float = 0.0
    needle: NeedleParams = field(
        default_factory=lambda: NeedleParams(
            speed_mm_s=4.0, gauge=20, start_depth_mm=10.0, length_mm=150.0
        )
    )

    def __post_init__(self) -> None:
        check_number("lao_deg", self.lao_deg, -90.0, 90.0)
        check_number("cranial_deg", self.cranial_deg, -45.0, 45.0)
        check_number("sod_mm", self.sod_mm, 300.0, 1500.0)
        check_number("sdd_mm", self.sdd_mm, self.sod_mm + 100.0, 2000.0)
        check_number("detector_size_mm", self.detector_size_mm, 50.0, 500.0)
        check_number("i0_photons", self.i0_photons, 10.0, 1e8)
        check_number("scatter_fraction", self.scatter_fraction, 0.0, 2.0)
        check_number("mu_water_per_mm", self.mu_water_per_mm, 0.005, 0.1)
        check_number("bone_contrast", self.bone_contrast, 0.5, 3.0)
        check_number("needle_mu_per_mm", self.needle_mu_per_mm, 0.1, 10.0)
        check_number("edge_enhance", self.edge_enhance, 0.0, 5.0)
        check_number("edge_sigma_mm", self.edge_sigma_mm, 0.5, 30.0)
        if len(self.disc_levels) != 2:
            raise ValueError(f"disc_levels must name 2 vertebrae, got {self.disc_levels}")
        check_number("approach_deg", self.approach_deg, 0.0, 80.0)
        check_number("target_posterior_mm", self.target_posterior_mm, -30.0, 30.0)
        check_number("target_lateral_mm", self.target_lateral_mm, -30.0, 30.0)
        check_number("isocentre_cranial_mm", self.isocentre_cranial_mm, -100.0, 300.0)
        check_number("isocentre_lateral_mm", self.isocentre_lateral_mm, -150.0, 150.0)
        if not isinstance(self.needle, NeedleParams):
            raise TypeError(f"needle must be NeedleParams, got {type(self.needle).__name__}")


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_needle(rng: np.random.Generator, base: NeedleParams, gauges: list[int]) -> NeedleParams:
    return NeedleParams(
        speed_mm_s=_u(rng, 0.5, 2.0) * base.speed_mm_s,
        drift_deg_s=float(rng.choice([0.0, _u(rng, 0.1, 2.0)])),
        max_drift_deg=_u(rng, 3.0, 20.0),
        gauge=int(rng.choice(gauges)),
        start_depth_mm=_u(rng, 0.5, 2.0) * base.start_depth_mm,
        length_mm=base.length_mm,
    )


#: Discs the simulated fluoroscopy needle is aimed at in training (the held-out set
#: uses T12-L1 and L2-L3, see ``guidance.training.dataset.heldout_params``).
FLUORO_TRAIN_LEVELS: tuple[tuple[str, str], ...] = (
    ("vertebrae_T11", "vertebrae_T12"),
    ("vertebrae_L1", "vertebrae_L2"),
)
#: Share of training fluoroscopy scenes aimed 40-220 mm cranial and up to 90 mm lateral
#: of the target (chest, heart borders, diaphragm, ribs; the needle mostly out of view).
FLUORO_SURVEY_FRACTION = 0.15
#: Share of training fluoroscopy scenes with a near-lateral view (60-90 degrees).
FLUORO_LATERAL_FRACTION = 0.15


def sample_params(modality: str, rng: np.random.Generator, *,
                  variety: bool = True) -> UltrasoundParams | FluoroParams:
    """Draw random parameters for domain randomisation.

    Fluoroscopy: LAO/RAO up to 45 degrees, cranial/caudal up to 15, dose, scatter,
    display inversion, unsharp masking gain 0-1, the needle on the L1-L2 disc, the
    C-arm aimed at it. With ``variety`` (training) also: the needle on a disc of
    :data:`FLUORO_TRAIN_LEVELS`, :data:`FLUORO_LATERAL_FRACTION` of scenes near-lateral
    (60-90 degrees), :data:`FLUORO_SURVEY_FRACTION` of scenes aimed away from the target
    and an unsharp-mask kernel of 2-8 mm (else 4 mm).

    Args:
        modality: ``"us"`` or ``"fluoro"``.
        rng: the only source of randomness.
        variety: fluoroscopy only: draw the training-only variety above (drawn after
            the rest, so ``False`` gives the same base parameters from the same rng).

    Returns:
        :class:`UltrasoundParams` or :class:`FluoroParams`.

    Raises:
        TypeError: rng is not a ``np.random.Generator``.
        ValueError: unknown modality.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be np.random.Generator, got {type(rng).__name__}")
    if modality == "us":
        base_us = UltrasoundParams()
        depth = _u(rng, 25.0, 60.0)
        fat = _u(rng, 2.0, 0.3 * depth)
        nerve_depth = _u(rng, max(fat + 4.0, 0.35 * depth), 0.75 * depth)
        nerve_r = (_u(rng, 2.5, 6.0), 0.0)
        nerve_r = (nerve_r[0], nerve_r[0] * _u(rng, 0.45, 0.9))
        vessel_r = _u(rng, 2.0, 5.0)
        return UltrasoundParams(
            depth_mm=depth,
            footprint_mm=_u(rng, 30.0, 50.0),
            frequency_mhz=_u(rng, 6.0, 15.0),
            gain_db=_u(rng, -8.0, 8.0),
            dynamic_range_db=_u(rng, 45.0, 75.0),
            attenuation_db_cm_mhz=_u(rng, 0.3, 0.8),
            tgc_fraction=_u(rng, 0.6, 1.1),
            psf_axial_mm=_u(rng, 0.07, 0.25),
            psf_lateral_mm=_u(rng, 0.2, 0.7),
            noise_db=_u(rng, -65.0, -40.0),
            speckle_decorrelation_rad_s=_u(rng, 0.0, 2.0),
            elevation_thickness_mm=_u(rng, 0.8, 3.0),
            needle_angle_deg=_u(rng, 20.0, 50.0),
            needle_from_left=bool(rng.integers(2)),
            needle_echo=_u(rng, 8.0, 40.0),
            reverberation_decay=_u(rng, 0.2, 0.75),
            shadow_db=_u(rng, 4.0, 20.0),
            fat_mm=fat,
            muscle_mm=_u(rng, 3.0, 20.0),
            nerve_depth_mm=nerve_depth,
            nerve_x_mm=_u(rng, -0.2, 0.25) * depth,
            nerve_radii_mm=nerve_r,
            vessel_radii_mm=(vessel_r, vessel_r * _u(rng, 0.7, 1.0)),
            vessel_offset_mm=(nerve_r[0] + vessel_r + _u(rng, 0.5, 4.0), _u(rng, -4.0, 6.0)),
            target_gap_mm=_u(rng, 0.3, 2.5),
            needle=_sample_needle(rng, base_us.needle, [20, 21, 22, 25]),
        )
    if modality == "fluoro":
        base_fl = FluoroParams()
        sod = _u(rng, 550.0, 800.0)
        fl = FluoroParams(
            lao_deg=_u(rng, -45.0, 45.0),
            cranial_deg=_u(rng, -15.0, 15.0),
            sod_mm=sod,
            sdd_mm=sod + _u(rng, 250.0, 450.0),
            detector_size_mm=_u(rng, 150.0, 230.0),
            i0_photons=float(np.exp(rng.uniform(np.log(3e3), np.log(3e5)))),
            scatter_fraction=_u(rng, 0.0, 0.4),
            mu_water_per_mm=_u(rng, 0.017, 0.024),
            bone_contrast=_u(rng, 1.0, 1.8),
            needle_mu_per_mm=_u(rng, 0.6, 1.5),
            invert_display=bool(rng.random() < 0.3),
            edge_enhance=_u(rng, 0.0, 1.0),
            disc_levels=base_fl.disc_levels,
            approach_left=bool(rng.integers(2)),
            approach_deg=_u(rng, 30.0, 45.0),
            target_posterior_mm=_u(rng, 2.0, 12.0),
            target_lateral_mm=_u(rng, 0.0, 10.0),
            isocentre_cranial_mm=_u(rng, 10.0, 30.0),
            needle=_sample_needle(rng, base_fl.needle, [18, 20, 22]),
        )
        if not variety:
            return fl
        # Drawn after the base ranges, so that variety=False draws the same numbers.
        lao = fl.lao_deg
        if rng.random() < FLUORO_LATERAL_FRACTION:  # near-lateral views (depth checks)
            lao = float(np.copysign(_u(rng, 60.0, 90.0), lao))
        cranial_iso, lateral_iso = fl.isocentre_cranial_mm, 0.0
        if rng.random() < FLUORO_SURVEY_FRACTION:  # aimed away from the target
            cranial_iso, lateral_iso = _u(rng, 40.0, 220.0), _u(rng, -90.0, 90.0)
        return dataclasses.replace(
            fl, lao_deg=lao, isocentre_cranial_mm=cranial_iso,
            isocentre_lateral_mm=lateral_iso, edge_sigma_mm=_u(rng, 2.0, 8.0),
            disc_levels=FLUORO_TRAIN_LEVELS[int(rng.integers(len(FLUORO_TRAIN_LEVELS)))])
    raise ValueError(f"modality must be 'us' or 'fluoro', got {modality!r}")
