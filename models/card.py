"""Model card: what a shipped segmentation model is, in one JSON file beside its ONNX.

A card says what the network expects (grid, spacing, normalisation, labels), where its
weights are (ONNX file and SHA-256), how it was trained (data, seed, time) and how well
it does (the metrics ``guidance eval`` measured). :func:`load_card` refuses a card that
is malformed or whose ONNX file does not match its hash, naming the file and the field.

Network contract (every model): input ``image`` float32 (N, 1, rows, cols), normalised
as the card says; output ``probs`` float32 (N, n_classes, rows, cols), softmax over
classes, class id = index into ``labels`` (``labels[0] == "background"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidance.records import MODALITIES

__all__ = [
    "CARD_SCHEMA",
    "MODALITIES",
    "NEEDLE_RULE_LIMITS",
    "NORMALISATIONS",
    "CardError",
    "ModelCard",
    "file_sha256",
    "load_card",
]

#: Version of the card's JSON layout.
CARD_SCHEMA = 1
#: Modalities a model can be made for.
#: Normalisation methods (see :func:`models.preprocess.normalise`).
NORMALISATIONS: tuple[str, ...] = ("zscore", "ct_window")
#: Needle-rule limits a card may carry, measured on the model's own training frames
#: (fields of :class:`trackers.needle_fit.NeedleRule`; positive numbers).
NEEDLE_RULE_LIMITS: tuple[str, ...] = ("max_flank_asymmetry", "min_mean_prob")


class CardError(ValueError):
    """A model card (or the file it points to) that cannot be used."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """Description of one shipped model (see module docstring for the tensor contract).

    Attributes:
        name: model name, e.g. ``"us-seg"``.
        modality: ``"us"``, ``"fluoro"`` or ``"ct"``.
        version: model version (semantic, e.g. ``"1.0.0"``).
        labels: class names, index = class id; ``labels[0] == "background"``.
        input_shape: (rows, cols) of the model grid, pixels.
        pixel_spacing_mm: nominal spacing of the model grid the network was trained at,
            mm per pixel (square pixels).
        spacing_range_mm: (lo, hi) range of model-grid spacings seen in training, mm;
            frames outside it are out of distribution.
        normalisation: ``{"method": "zscore"}`` (per frame: minus mean, over std) or
            ``{"method": "ct_window", "center_hu": c, "width_hu": w}``.
        architecture: how to rebuild the network in torch (``models.net.build_net``).
        onnx_file: ONNX file name, relative to the card's folder.
        onnx_sha256: SHA-256 of the ONNX file.
        opset: ONNX opset of the file.
        training: training data description (simulator, seeds, parameter ranges,
            number of frames, epochs, wall time).
        metrics: measured metrics (``guidance eval``), with the held-out set described.
        needle_rule: limits of the needle-reporting rule that belong to this model,
            measured on its training frames when it was trained (names in
            :data:`NEEDLE_RULE_LIMITS`; how they were measured: ``training``); empty:
            the default rule.
    """

    name: str
    modality: str
    version: str
    labels: tuple[str, ...]
    input_shape: tuple[int, int]
    pixel_spacing_mm: float
    spacing_range_mm: tuple[float, float]
    normalisation: dict[str, Any]
    architecture: dict[str, Any]
    onnx_file: str
    onnx_sha256: str
    opset: int
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    needle_rule: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise CardError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if len(self.labels) < 2 or self.labels[0] != "background":
            raise CardError(f"labels must start with 'background' and have >= 2 classes, "
                            f"got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise CardError(f"labels must be unique, got {list(self.labels)}")
        if (len(self.input_shape) != 2
                or not all(isinstance(v, int) and 16 <= v <= 4096 for v in self.input_shape)):
            raise CardError(f"input_shape must be two integers in [16, 4096], "
                            f"got {self.input_shape!r}")
        sp = self.pixel_spacing_mm
        lo, hi = self.spacing_range_mm
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                   for v in (sp, lo, hi)) or not lo <= sp <= hi:
            raise CardError(f"need 0 < spacing_range_mm[0] <= pixel_spacing_mm <= "
                            f"spacing_range_mm[1], got {sp!r} and {self.spacing_range_mm!r}")
        method = self.normalisation.get("method")
        if method not in NORMALISATIONS:
            raise CardError(f"normalisation.method must be one of {NORMALISATIONS}, "
                            f"got {method!r}")
        if method == "ct_window":
            for k in ("center_hu", "width_hu"):
                v = self.normalisation.get(k)
                if not isinstance(v, (int, float)) or (k == "width_hu" and v <= 0):
                    raise CardError(f"normalisation.{k} must be a number (width > 0), got {v!r}")
        if not isinstance(self.onnx_file, str) or not self.onnx_file.endswith(".onnx") \
                or "/" in self.onnx_file or "\\" in self.onnx_file:
            raise CardError(f"onnx_file must be a bare *.onnx file name, got {self.onnx_file!r}")
        if not (isinstance(self.onnx_sha256, str) and len(self.onnx_sha256) == 64):
            raise CardError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")
        for k, v in self.needle_rule.items():
            if k not in NEEDLE_RULE_LIMITS:
                raise CardError(f"needle_rule.{k}: unknown limit (known: "
                                f"{', '.join(NEEDLE_RULE_LIMITS)})")
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and v > 0):
                raise CardError(f"needle_rule.{k} must be a positive number, got {v!r}")

    @property
    def n_classes(self) -> int:
        """Number of output channels."""
        return len(self.labels)

    def class_id(self, name: str) -> int:
        """Class id of a label name.

        Raises:
            KeyError: the model has no such class.
        """
        try:
            return self.labels.index(name)
        except ValueError:
            raise KeyError(f"model {self.name} has no class {name!r} "
                           f"(labels {list(self.labels)})") from None

    def to_json(self) -> dict[str, Any]:
        """The card as a JSON-ready dict (with ``schema``)."""
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        d["input_shape"] = list(self.input_shape)
        d["spacing_range_mm"] = list(self.spacing_range_mm)
        return {"schema": CARD_SCHEMA, **d}

    def save(self, path: Path) -> None:
        """Write the card as JSON (indented, keys in field order)."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def load_card(path: Path | str, *, check_hash: bool = True) -> tuple[ModelCard, Path]:
    """Read and validate a model card.

    Args:
        path: the card's JSON file.
        check_hash: also hash the ONNX file and compare with the card.

    Returns:
        (card, onnx_path): the card and the absolute path of its ONNX file.

    Raises:
        CardError: unreadable JSON, missing/unknown/invalid field, missing ONNX file or
            hash mismatch; the message names the card file and the field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise CardError(f"{path}: cannot read model card: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CardError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CardError(f"{path}: a model card is a JSON object, got {type(raw).__name__}")
    schema = raw.pop("schema", None)
    if schema != CARD_SCHEMA:
        raise CardError(f"{path}: schema must be {CARD_SCHEMA}, got {schema!r}")
    names = {f.name for f in dataclasses.fields(ModelCard)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise CardError(f"{path}: unknown field(s) {unknown}")
    required = {f.name for f in dataclasses.fields(ModelCard)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise CardError(f"{path}: missing field(s) {missing}")
    try:
        raw["labels"] = tuple(str(v) for v in raw["labels"])
        raw["input_shape"] = tuple(raw["input_shape"])
        raw["spacing_range_mm"] = tuple(float(v) for v in raw["spacing_range_mm"])
        for k in ("normalisation", "architecture", "training", "metrics", "needle_rule"):
            if k in raw and not isinstance(raw[k], dict):
                raise CardError(f"{k} must be a JSON object, got {type(raw[k]).__name__}")
        card = ModelCard(**raw)
    except CardError as e:
        raise CardError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise CardError(f"{path}: invalid field: {e}") from e
    onnx_path = (path.parent / card.onnx_file).resolve()
    if not onnx_path.is_file():
        raise CardError(f"{path}: onnx_file {card.onnx_file!r} not found at {onnx_path}")
    if check_hash:
        digest = file_sha256(onnx_path)
        if digest != card.onnx_sha256:
            raise CardError(f"{path}: {card.onnx_file} has SHA-256 {digest[:12]}..., the card "
                            f"says {card.onnx_sha256[:12]}... (weights changed or corrupt)")
    return card, onnx_path
