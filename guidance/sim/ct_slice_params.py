"""The ranges simulated CT needle slices are drawn from, and the CT number scale.

:class:`CtSliceParams` holds the training ranges (the defaults) and the held-out ranges
(:meth:`CtSliceParams.held_out`: other vertebral levels, other gauges, more degraded
images); :mod:`guidance.sim.ct_slices` draws each frame from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from guidance.sim.params import GAUGE_DIAMETER_MM, check_number

__all__ = ["AIR_HU", "MAX_HU", "MIN_HU", "CtSliceParams"]

#: The 12-bit CT number scale, HU.
MIN_HU = -1024.0
MAX_HU = 3071.0
#: Below this HU a sample counts as air when looking for the skin.
AIR_HU = -500.0
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
            (:func:`guidance.sim.ct_distractors.head_slice_hu`: scalp, a skull of outer
            table, diploe and inner table, brain), always without a needle. The real CT
            has no skull; a model that never saw one takes the straight stretches of its
            tables for needles. Off (0) in training: with 8 % or 15 % head slices the retrained
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

