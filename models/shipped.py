"""Where the shipped models are: ``models/weights/{modality}-seg.json`` (+ ``.onnx``)."""

from __future__ import annotations

from pathlib import Path

from guidance.records import MODALITIES

__all__ = ["SHIPPED_MODALITIES", "WEIGHTS_DIR", "shipped_card"]

#: Modalities a model is shipped for.
#: Every modality has a shipped model.
SHIPPED_MODALITIES: tuple[str, ...] = MODALITIES
#: The folder holding the shipped cards and ONNX files.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_card(modality: str) -> Path:
    """Path of the shipped model card for a modality (the card itself is checked by
    :func:`models.card.load_card` when loaded).

    Args:
        modality: one of :data:`SHIPPED_MODALITIES`.

    Returns:
        ``models/weights/{modality}-seg.json``.

    Raises:
        ValueError: unknown modality.
        FileNotFoundError: the card is not there (names the path and how to make it).
    """
    if modality not in SHIPPED_MODALITIES:
        raise ValueError(f"modality must be one of {SHIPPED_MODALITIES}, got {modality!r}")
    path = WEIGHTS_DIR / f"{modality}-seg.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped {modality} model: {path} is missing (make it with "
                                f"`guidance train --modality {modality}`)")
    return path
