"""Typed pipeline configuration: one section per stage, unknown keys are errors.

A mistyped safety margin must never fall back silently to a default (STYLE.md), so
:func:`config_from_dict` refuses unknown sections and keys, and every value is checked
with a message naming it (``"safety.caution_offset_mm must be > 0, got -2"``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidance.io.validate import InputError, read_json_document
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


class ConfigError(InputError):
    """A configuration value or key that is not accepted."""


def _positive(section: str, obj: object, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0
                or not math.isfinite(v)):
            raise ConfigError(f"{section}.{n} must be a finite number > 0, got {v!r}")


#: Modalities of the live loop; a frame's modality comes from ``ingest.modality`` or its
#: IGTLv3 metadata ``Modality``, never from its pixel type.


@dataclass(frozen=True)
class IngestConfig:
    """Which stream to follow, what it is, and when input counts as stale.

    Attributes:
        image_device: device name of the frames (empty: the newest IMAGE of any device).
        stale_after_s: a frame (or no frame) older than this makes the state STALE.
        modality: ``us``, ``fluoro`` or ``ct`` for every frame, or empty: each frame's
            IGTLv3 metadata ``Modality`` says (DICOM terms: US, CT; XA, RF, DX, CR for
            fluoroscopy). A frame whose modality is unknown is refused (NO_GUIDANCE).
        ct_slabs: CT images are control slabs (2-64 contiguous slices: the needle in 3D,
            the patient's motion; a single slice is refused as a slab); false: single
            CT-fluoroscopy slices take the 2D path (placed through the transform graph)
            and only images of several slices are slabs.
        ct_stale_after_s: after a CT control slab, the result stands this long before
            the state turns STALE (scans come seconds apart; the age is shown meanwhile).
    """

    image_device: str = ""
    stale_after_s: float = 0.5
    modality: str = ""
    ct_slabs: bool = True
    ct_stale_after_s: float = 60.0

    def __post_init__(self) -> None:
        _positive("ingest", self, "stale_after_s")
        _positive("ingest", self, "ct_stale_after_s")
        if self.modality not in ("", *MODALITIES):
            raise ConfigError(f"ingest.modality must be empty (from each frame's metadata) or "
                              f"one of {', '.join(MODALITIES)}, got {self.modality!r}")


@dataclass(frozen=True)
class NavigationConfig:
    """The room: tracked poses, their clock and limits, tracker against image.

    Attributes:
        pose_stale_after_s: a tracked pose older than this (or no pose within this of a
            frame's time) makes the update STALE; per transform in ``stale_limits_s``.
        stale_limits_s: ``{"NeedleToReference": 0.1, ...}``: own limits, s.
        time_base: ``sender`` (poses and frames are placed in time by their senders'
            timestamps: PLUS stamps both with one clock) or ``receive`` (local receive
            time, for senders without a usable clock).
        image_frame: the frame of an IMAGE whose device name has no ``_Frame`` suffix
            (PLUS names images ``Image_Reference``: the matrix maps pixels to Reference).
        tracker_sigma_mm: measurement noise of a tracked tip for the needle filter, mm.
        image_tracker_tip_mm: the needle seen in the image and the tracked needle
            disagree beyond this (tips), mm: DEGRADED with both numbers.
        image_tracker_angle_deg: ... or beyond this (axes, in the image), degrees.
        image_plane_mm: tips are compared only when the tracked tip is within this of
            an ultrasound image's plane (else it is not in the picture), mm.
        pose_updates: with no image stream, every new needle pose is a guidance update
            (navigation on the planning CT from poses alone).
    """

    pose_stale_after_s: float = 0.25
    stale_limits_s: dict[str, float] = field(default_factory=dict)
    time_base: str = "sender"
    image_frame: str = "Reference"
    tracker_sigma_mm: float = 0.25
    image_tracker_tip_mm: float = 3.0
    image_tracker_angle_deg: float = 10.0
    image_plane_mm: float = 3.0
    pose_updates: bool = True

    def __post_init__(self) -> None:
        _positive("navigation", self, "pose_stale_after_s", "tracker_sigma_mm",
                  "image_tracker_tip_mm", "image_tracker_angle_deg", "image_plane_mm")
        if self.time_base not in ("sender", "receive"):
            raise ConfigError(f"navigation.time_base must be sender or receive, got "
                              f"{self.time_base!r}")
        from trackers.transform_graph import FRAME_PATTERN, parse_transform_name

        if not isinstance(self.image_frame, str) or not FRAME_PATTERN.fullmatch(
                self.image_frame):
            raise ConfigError(f"navigation.image_frame must be a frame name like Reference, "
                              f"got {self.image_frame!r}")
        for name, limit in self.stale_limits_s.items():
            try:
                parse_transform_name(name)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"navigation.stale_limits_s: {e}") from None
            if (isinstance(limit, bool) or not isinstance(limit, (int, float))
                    or not limit > 0 or not math.isfinite(limit)):
                raise ConfigError(f"navigation.stale_limits_s.{name} must be a finite "
                                  f"number > 0, got {limit!r}")


@dataclass(frozen=True)
class PreprocessConfig:
    """Resampling to the working grid.

    Attributes:
        work_size: longest side of the grid the detector works on, pixels.
    """

    work_size: int = 256

    def __post_init__(self) -> None:
        _positive("preprocess", self, "work_size")
        if not isinstance(self.work_size, int) or self.work_size < 32:
            raise ConfigError(
                f"preprocess.work_size must be an integer >= 32, got {self.work_size!r}"
            )


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation: the model (primary) and the classical detector beside it.

    Attributes:
        model: ``auto`` (the shipped model of the frame's modality, ``models/weights``),
            ``none`` (classical detector only, by choice), or the path of a model card
            for every frame. A model that cannot be loaded leaves the classical detector
            and makes every frame of its modality DEGRADED.
        backends: backend chain, ``auto`` or comma-separated names
            (``tensorrt,torch-cuda,onnxruntime-cpu``); see ``models.backends``.
        threads: CPU threads for the model (ONNX Runtime / torch).
        needle_threshold: needle probability at or above which a pixel is needle.
        min_needle_length_mm: shorter needle pieces are not reported, mm.
        needle_max_scatter_mm: a needle piece whose pixels scatter more than
            ``max(this, needle_max_scatter_px * model spacing)`` (RMS, mm) about its
            axis is not straight and not reported (``trackers.needle_fit.NeedleRule``).
        needle_max_scatter_px: see ``needle_max_scatter_mm``, model pixels.
        needle_min_collinear: share of the model's needle evidence that must lie on the
            fitted line, in [0, 1]; below it the evidence is scattered, not a needle.
        crosscheck: run the classical detector beside the model and compare.
        disagree_tip_mm: model and classical tips farther apart than this disagree, mm.
        disagree_angle_deg: needle axes further apart than this disagree, degrees.
        polarity: classical detector: ``bright`` (the needle is brighter than its
            surroundings: ultrasound, CT, and X-ray displays where attenuation is shown
            bright) or ``dark`` (X-ray displays where metal is shown dark).
        sigma_px: classical ridge scale on the working grid, pixels.
        min_length_px: classical detector's shortest needle, working-grid pixels.
        label_width_px: width of the classical needle in the label image, frame pixels.
    """

    model: str = "auto"
    backends: str = "auto"
    threads: int = 2
    needle_threshold: float = 0.5
    min_needle_length_mm: float = 5.0
    needle_max_scatter_mm: float = 0.45
    needle_max_scatter_px: float = 1.4
    needle_min_collinear: float = 0.5
    crosscheck: bool = True
    disagree_tip_mm: float = 3.0
    disagree_angle_deg: float = 5.0
    polarity: str = "bright"
    sigma_px: float = 1.5
    min_length_px: float = 20.0
    label_width_px: int = 3

    def __post_init__(self) -> None:
        if self.polarity not in ("bright", "dark"):
            raise ConfigError(f"segment.polarity must be bright or dark, got {self.polarity!r}")
        if not self.model:
            raise ConfigError("segment.model must be auto, none or a model card path")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"segment.threads must be an integer >= 1, got {self.threads!r}")
        if not 0.0 < self.needle_threshold < 1.0:
            raise ConfigError(f"segment.needle_threshold must be in (0, 1), "
                              f"got {self.needle_threshold!r}")
        _positive("segment", self, "sigma_px", "min_length_px", "label_width_px",
                  "min_needle_length_mm", "disagree_tip_mm", "disagree_angle_deg",
                  "needle_max_scatter_mm", "needle_max_scatter_px")
        c = self.needle_min_collinear
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not 0.0 <= c <= 1.0:
            raise ConfigError(f"segment.needle_min_collinear must be in [0, 1], got {c!r}")


@dataclass(frozen=True)
class OutputConfig:
    """What goes back over OpenIGTLink and how the overlay is drawn.

    Attributes:
        label_device: device name of the label IMAGE.
        tip_device: device name of the needle tip TRANSFORM (RAS, for 3D Slicer).
        warning_device: device name of the warning STRING and STATUS.
        plan_device: device name of the plan POINT list.
        send_labels: send the label IMAGE every frame.
    """

    label_device: str = "NeedleLabel"
    tip_device: str = "NeedleTipToRAS"
    warning_device: str = "GuidanceWarning"
    plan_device: str = "Plan"
    send_labels: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    """All sections."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    navigation: NavigationConfig = field(default_factory=NavigationConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    image_anatomy: ImageAnatomyConfig = field(default_factory=ImageAnatomyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def config_from_dict(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    """Build a config from a dict (parsed JSON). Missing keys take defaults; unknown
    sections or keys and wrong types raise :class:`ConfigError` naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object with sections, got {type(data).__name__}")
    sections = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}
    defaults = PipelineConfig()
    built: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section {name!r} (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: section {name!r} must be an object")
        cls = type(getattr(defaults, name))
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, v in value.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown key {name}.{key} (known: {', '.join(known)})")
            expected = type(getattr(getattr(defaults, name), key))
            ok = isinstance(v, expected) or (expected is float and isinstance(v, int))
            if isinstance(v, bool) and expected is not bool:
                ok = False
            if not ok:
                raise ConfigError(f"{where}: {name}.{key} must be {expected.__name__}, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where}: {name}.{key} must be finite, got {v!r}")
        try:
            built[name] = cls(**value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        except (TypeError, ValueError) as e:  # the section's own checks
            raise ConfigError(f"{where}: {e}") from e
    return PipelineConfig(**built)


def load_config(path: str | Path) -> PipelineConfig:
    """Load a JSON config file; errors name the file."""
    p = Path(path)
    data = read_json_document(p, "config file", error=ConfigError)
    return config_from_dict(data, where=str(p))
