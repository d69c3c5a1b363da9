"""Export a trained network as the shipped pair: ONNX file + model card.

The ONNX file holds the *fused* network (BatchNorm folded into the convs,
:func:`models.net.fuse_batchnorm`), exported without constant folding so its initializer
names are the fused module's parameter names: the torch backend rebuilds the network
from the card and loads those same weights, and TensorRT builds its engine from the
same file. Axes N, H and W are dynamic (H, W multiples of 16).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from models.card import ModelCard, file_sha256
from models.net import LiteUNet, fuse_batchnorm

__all__ = ["OPSET", "export_model", "export_onnx"]

#: ONNX opset of shipped models.
OPSET = 17


def export_onnx(net: LiteUNet, path: Path, input_shape: tuple[int, int]) -> str:
    """Write the fused network as ONNX; returns the file's SHA-256.

    Args:
        net: trained network (train form; fused here).
        path: output ``.onnx`` path.
        input_shape: (rows, cols) used to trace; the file accepts any multiple of 16.
    """
    fused = fuse_batchnorm(net)
    x = torch.zeros(1, 1, *input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            fused, (x,), str(path), input_names=["image"], output_names=["probs"],
            opset_version=OPSET, dynamo=False, do_constant_folding=False,
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "probs": {0: "n", 2: "h", 3: "w"}})
    return file_sha256(path)


def export_model(
    net: LiteUNet,
    out_dir: Path,
    *,
    name: str,
    modality: str,
    version: str,
    labels: tuple[str, ...],
    input_shape: tuple[int, int],
    pixel_spacing_mm: float,
    spacing_range_mm: tuple[float, float],
    normalisation: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> tuple[ModelCard, Path]:
    """Export ONNX + card into ``out_dir`` as ``<name>.onnx`` and ``<name>.json``.

    Returns:
        (card, card_path).
    """
    out_dir = Path(out_dir)
    onnx_path = out_dir / f"{name}.onnx"
    sha = export_onnx(net, onnx_path, input_shape)
    card = ModelCard(
        name=name, modality=modality, version=version, labels=tuple(labels),
        input_shape=input_shape, pixel_spacing_mm=float(pixel_spacing_mm),
        spacing_range_mm=(float(spacing_range_mm[0]), float(spacing_range_mm[1])),
        normalisation=normalisation,
        architecture={"name": "lite-unet", "widths": list(net.widths),
                      "refine_width": net.refine_width},
        onnx_file=onnx_path.name, onnx_sha256=sha, opset=OPSET, training=training,
        metrics=metrics or {})
    card_path = out_dir / f"{name}.json"
    card.save(card_path)
    return card, card_path
