"""Typed pipeline configuration: one section per stage, unknown keys are errors.

A mistyped safety margin must never fall back silently to a default (STYLE.md): every
section is built by the one configuration loader (:mod:`guidance.io.config_schema`),
which refuses unknown sections and keys (listing the allowed ones), wrong types,
non-finite numbers and out-of-range values with a message naming the file, the key path,
the range and the value (``"c.json: safety.caution_extra_mm: expected a number in
[0, 50] mm, got -2"``). Defaults, units and ranges are declared once, on each field
(``docs/CONFIG.md`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidance.io.config_schema import (
    ConfigError,
    check_fields,
    load_file,
    load_section,
    meta,
    setting,
)
from guidance.records import MODALITIES
from guidance.safety.config import SafetyConfig
from guidance.safety.image_anatomy import ImageAnatomyConfig

__all__ = [
    "MODALITIES",
    "ConfigError",
    "IngestConfig",
    "NavigationConfig",
    "OutputConfig",
    "PipelineConfig",
    "PreprocessConfig",
    "SafetyConfig",
    "SegmentConfig",
    "config_from_dict",
    "load_config",
]


@dataclass(frozen=True)
class IngestConfig:
    """Which stream to follow, what it is, and when input counts as stale.

    ``modality``: a frame whose modality is unknown is refused (NO_GUIDANCE); empty: each
    frame's IGTLv3 metadata ``Modality`` says (DICOM terms: US, CT; XA, RF, DX, CR for
    fluoroscopy). ``ct_slabs``: control slabs are 2-64 contiguous slices (the needle in
    3D, the patient's motion); false: single CT-fluoroscopy slices take the 2D path.
    """

    image_device: str = setting(
        "", "device name of the frames (empty: the newest IMAGE of any device)")
    stale_after_s: float = setting(
        0.5, "a frame (or no frame) older than this makes the state STALE", unit="s",
        gt=0, le=60)
    modality: str = setting(
        "", "modality of every frame (empty: each frame's IGTLv3 metadata)",
        choices=("", *MODALITIES))
    ct_slabs: bool = setting(
        True, "CT images are control slabs (a single slice is refused as a slab); false: "
              "only images of several slices are slabs")
    ct_stale_after_s: float = setting(
        60.0, "after a CT control slab, the result stands this long before STALE",
        unit="s", gt=0, le=3600)

    def __post_init__(self) -> None:
        check_fields(self, "ingest")


@dataclass(frozen=True)
class NavigationConfig:
    """The room: tracked poses, their clock and limits, tracker against image.

    ``time_base``: ``sender`` (poses and frames are placed in time by their senders'
    timestamps: PLUS stamps both with one clock) or ``receive`` (local receive time, for
    senders without a usable clock). ``image_frame``: PLUS names images
    ``Image_Reference``: the matrix maps pixels to Reference.
    """

    pose_stale_after_s: float = setting(
        0.25, "a tracked pose older than this (or none within this of a frame's time) "
              "makes the update STALE", unit="s", gt=0, le=10)
    stale_limits_s: dict[str, float] = field(default_factory=dict, metadata=meta(
        "own staleness limits per transform, {\"NeedleToReference\": 0.1}", unit="s",
        gt=0, le=10))
    time_base: str = setting("sender", "whose clock places poses and frames in time",
                             choices=("sender", "receive"))
    image_frame: str = setting(
        "Reference", "frame of an IMAGE whose device name has no _Frame suffix")
    tracker_sigma_mm: float = setting(
        0.25, "measurement noise (1 sigma) of a tracked tip for the needle filter",
        unit="mm", gt=0, le=10)
    image_sigma_px: float = setting(
        1.5, "measurement noise (1 sigma) of an image needle tip for the needle filter, "
             "in working-grid pixels", unit="px", gt=0, le=20)
    unfiltered_confidence: float = setting(
        0.5, "confidence of a tracked needle the filter has no estimate for yet",
        ge=0, le=1)
    image_tracker_tip_mm: float = setting(
        3.0, "image and tracked needle tips farther apart: DEGRADED", unit="mm",
        gt=0, le=50)
    image_tracker_angle_deg: float = setting(
        10.0, "image and tracked needle axes further apart (in the image): DEGRADED",
        unit="deg", gt=0, le=90)
    image_plane_mm: float = setting(
        3.0, "tips are compared only when the tracked tip is within this of an "
             "ultrasound image's plane", unit="mm", gt=0, le=50)
    pose_updates: bool = setting(
        True, "with no image stream, every new needle pose is a guidance update")

    def __post_init__(self) -> None:
        check_fields(self, "navigation")
        from trackers.transform_graph import FRAME_PATTERN, parse_transform_name

        if not FRAME_PATTERN.fullmatch(self.image_frame):
            raise ConfigError(f"expected a frame name like Reference, got "
                              f"{self.image_frame!r}", key="image_frame",
                              section="navigation")
        for name in self.stale_limits_s:
            try:
                parse_transform_name(name)
            except (TypeError, ValueError) as e:
                raise ConfigError(str(e), key=f"stale_limits_s.{name}",
                                  section="navigation") from None


@dataclass(frozen=True)
class PreprocessConfig:
    """Resampling to the working grid."""

    work_size: int = setting(256, "longest side of the grid the detector works on",
                             unit="px", ge=32, le=4096)

    def __post_init__(self) -> None:
        check_fields(self, "preprocess")


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation: the model (primary) and the classical detector beside it.

    ``model``: ``auto`` (the shipped model of the frame's modality, ``models/weights``),
    ``none`` (classical detector only, by choice), or the path of a model card; a model
    that cannot be loaded leaves the classical detector and makes every frame of its
    modality DEGRADED. ``needle_max_scatter_mm``: a needle piece whose pixels scatter more
    than ``max(this, needle_max_scatter_px * model spacing)`` (RMS) about its axis is not
    straight (``trackers.needle_fit.NeedleRule``). ``polarity``: ``bright`` (ultrasound,
    CT, X-ray displays showing attenuation bright) or ``dark`` (metal shown dark).
    """

    model: str = setting("auto", "auto, none or the path of a model card", nonempty=True)
    backends: str = setting(
        "auto", "backend chain: auto or comma-separated names (tensorrt,torch-cuda,"
                "onnxruntime-cpu)", nonempty=True)
    threads: int = setting(2, "CPU threads for the model (ONNX Runtime / torch)", ge=1,
                           le=256)
    needle_threshold: float = setting(
        0.5, "needle probability at or above which a pixel is needle", gt=0, lt=1)
    min_needle_length_mm: float = setting(
        5.0, "shorter needle pieces are not reported", unit="mm", gt=0, le=200)
    needle_max_scatter_mm: float = setting(
        0.45, "largest RMS scatter of a needle's pixels about its axis", unit="mm",
        gt=0, le=50)
    needle_max_scatter_px: float = setting(
        1.4, "the same in model pixels", unit="px", gt=0, le=100)
    needle_min_collinear: float = setting(
        0.5, "share of the model's needle evidence that must lie on the fitted line",
        ge=0, le=1)
    crosscheck: bool = setting(True, "run the classical detector beside the model and "
                                     "compare")
    disagree_tip_mm: float = setting(
        3.0, "model and classical tips farther apart disagree", unit="mm", gt=0, le=100)
    disagree_angle_deg: float = setting(
        5.0, "model and classical axes further apart disagree", unit="deg", gt=0, le=90)
    unconfirmed_confidence_scale: float = setting(
        0.8, "the model's needle confidence is multiplied by this when the classical "
             "detector sees no needle", ge=0, le=1)
    disagree_confidence_scale: float = setting(
        0.5, "the model's needle confidence is multiplied by this when the detectors "
             "disagree", ge=0, le=1)
    polarity: str = setting("bright", "classical detector: the needle is bright or dark",
                            choices=("bright", "dark"))
    sigma_px: float = setting(1.5, "classical ridge scale on the working grid", unit="px",
                              gt=0, le=20)
    min_length_px: float = setting(
        20.0, "classical detector's shortest needle, working-grid pixels", unit="px",
        gt=0, le=4096)
    label_width_px: int = setting(
        3, "width of the classical needle in the label image, frame pixels", unit="px",
        ge=1, le=64)
    focus_px: int = setting(
        96, "CPU latency: once a needle is found, the model runs on a window this many "
             "model pixels a side around its tip (0: always the whole frame); the whole "
             "frame again whenever the window shows no needle or the needle reaches its "
             "edge", unit="px", ge=0, le=1024)
    focus_modalities: tuple[str, ...] = setting(
        ("fluoro",), "modalities whose frames may be segmented in a focus window: only "
                     "those whose safety does not read the image's anatomy (ultrasound's "
                     "nerves and vessels are checked on the whole frame)",
        choices=MODALITIES)

    def __post_init__(self) -> None:
        check_fields(self, "segment")
        if self.focus_px % 16:
            raise ConfigError("must be a multiple of 16 (the network's stride)",
                              key="focus_px", section="segment")
        if "us" in self.focus_modalities:
            raise ConfigError("must not include us: the image-anatomy check needs the whole "
                              "ultrasound frame", key="focus_modalities", section="segment")


@dataclass(frozen=True)
class OutputConfig:
    """What goes back over OpenIGTLink and how the overlay is drawn."""

    label_device: str = setting("NeedleLabel", "device name of the label IMAGE",
                                nonempty=True)
    tip_device: str = setting("NeedleTipToRAS", "device name of the needle tip TRANSFORM "
                                                "(RAS, for 3D Slicer)", nonempty=True)
    warning_device: str = setting("GuidanceWarning", "device name of the warning STRING "
                                                     "and STATUS", nonempty=True)
    plan_device: str = setting("Plan", "device name of the plan POINT list", nonempty=True)
    send_labels: bool = setting(True, "send the label IMAGE every frame")

    def __post_init__(self) -> None:
        check_fields(self, "output")


@dataclass(frozen=True)
class PipelineConfig:
    """All sections (``guidance run --config``)."""

    ingest: IngestConfig = field(
        default_factory=IngestConfig, metadata=meta("input stream"))
    navigation: NavigationConfig = field(
        default_factory=NavigationConfig, metadata=meta("the room"))
    preprocess: PreprocessConfig = field(
        default_factory=PreprocessConfig, metadata=meta("working grid"))
    segment: SegmentConfig = field(
        default_factory=SegmentConfig, metadata=meta("segmentation"))
    safety: SafetyConfig = field(
        default_factory=SafetyConfig, metadata=meta("the plan's safety check"))
    image_anatomy: ImageAnatomyConfig = field(
        default_factory=ImageAnatomyConfig, metadata=meta("nerves and vessels on ultrasound"))
    output: OutputConfig = field(
        default_factory=OutputConfig, metadata=meta("outputs"))

    def __post_init__(self) -> None:
        check_fields(self)


def config_from_dict(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    """Build a config from a dict (parsed JSON). Missing keys take defaults; unknown
    sections or keys, wrong types and out-of-range values raise :class:`ConfigError`
    naming ``where``, the key path and the value."""
    return load_section(PipelineConfig, data, file=where)


def load_config(path: str | Path) -> PipelineConfig:
    """Load a JSON config file; errors name the file."""
    return load_file(PipelineConfig, path)
