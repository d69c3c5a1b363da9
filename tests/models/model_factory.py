"""Test models: a LiteUNet trained for a few steps on a trivial synthetic task, fused,
exported to ONNX exactly as the shipped models are, with its model card.

The task (so that masks are non-trivial and every class occurs): on a noisy background,
class 1 is a bright line, class 2 a bright disk, class 3 a dark disk.

Also a command, to make a model for ``guidance bench --stage segment``::

    python -m tests.models.model_factory /tmp/segmodel [--steps 50] [--size 256]
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelCard, file_sha256

LABELS = ("background", "needle", "bright_disk", "dark_disk")


def synthetic_batch(rng: np.random.Generator, n: int, size: int,
                    n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, size, size) float32 images (zero mean, unit-ish std) and (n, size, size)
    int64 labels of the synthetic task (classes >= n_classes are left out)."""
    imgs = rng.normal(0.0, 0.3, (n, 1, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for k in range(n):
        if n_classes > 2:
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            r = rng.uniform(0.06, 0.14) * size
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            imgs[k, 0][disk] += 1.5
            labels[k][disk] = 2
        if n_classes > 3:
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            r = rng.uniform(0.06, 0.14) * size
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            imgs[k, 0][disk] -= 1.5
            labels[k][disk] = 3
        a = rng.uniform(0, math.pi)
        px, py = rng.uniform(0.3, 0.7, 2) * size
        dist = np.abs((xx - px) * math.sin(a) - (yy - py) * math.cos(a))
        line = dist < max(1.5, size / 64)
        imgs[k, 0][line] += 2.0
        labels[k][line] = 1
    return imgs, labels


def make_model(out_dir: Path, *, n_classes: int = 4, steps: int = 50, size: int = 64,
               input_shape: tuple[int, int] = (256, 256),
               architecture: dict[str, Any] | None = None, seed: int = 0,
               name: str = "test-seg") -> Path:
    """Train, fuse, export and write a card; returns the card's path.

    Args:
        out_dir: folder for ``{name}.onnx`` and ``{name}.json``.
        n_classes: 2..4 classes of the synthetic task.
        steps: training steps (batch 4 at ``size``); 0 keeps random weights (BN
            statistics still from a few train-mode passes).
        size: training image size, px (multiple of 16).
        input_shape: the card's model grid.
        architecture: ``models.net`` architecture (default DEFAULT_ARCHITECTURE).
        seed: torch and numpy seed.
        name: model name and file stem.
    """
    import torch

    from models.net import DEFAULT_ARCHITECTURE

    threads = torch.get_num_threads()
    # One thread: on a shared machine torch's spinning workers make training 10x slower.
    torch.set_num_threads(1)
    try:
        return _make_model(out_dir, n_classes, steps, size, input_shape,
                           dict(DEFAULT_ARCHITECTURE if architecture is None else architecture),
                           seed, name)
    finally:
        torch.set_num_threads(threads)


def _make_model(out_dir: Path, n_classes: int, steps: int, size: int,
                input_shape: tuple[int, int], arch: dict[str, Any], seed: int,
                name: str) -> Path:
    import torch

    from models.net import build_net, fuse_batchnorm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_net(arch, n_classes)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    weights = torch.tensor([1.0, 8.0, 2.0, 2.0][:n_classes])
    for _ in range(max(steps, 3)):
        x, y = synthetic_batch(rng, 4, size, n_classes)
        logits = net.logits(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), weight=weights)
        if steps:
            opt.zero_grad()
            loss.backward()
            opt.step()
    fused = fuse_batchnorm(net.eval())
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    rows, cols = input_shape
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but is the one that keeps the
        # initializer names equal to the state_dict keys (the torch backend needs that).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            fused, (torch.zeros(1, 1, rows, cols),), str(onnx_path), dynamo=False,
            do_constant_folding=False, opset_version=17, input_names=["image"],
            output_names=["probs"],
            dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "probs": {0: "N", 2: "H", 3: "W"}})
    card = ModelCard(
        name=name, modality="us", version="0.0.1", labels=LABELS[:n_classes],
        input_shape=(rows, cols), pixel_spacing_mm=0.2, spacing_range_mm=(0.1, 0.4),
        normalisation={"method": "zscore"}, architecture=arch, onnx_file=onnx_path.name,
        onnx_sha256=file_sha256(onnx_path), opset=17,
        training={"task": "tests.models.model_factory synthetic", "steps": steps,
                  "seed": seed})
    card_path = out_dir / f"{name}.json"
    card.save(card_path)
    return card_path


def main() -> None:
    """Command line: make a model for the bench."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=256, help="model grid rows = cols")
    ap.add_argument("--classes", type=int, default=4)
    a = ap.parse_args()
    path = make_model(a.out_dir, n_classes=a.classes, steps=a.steps,
                      input_shape=(a.size, a.size))
    print(path)


if __name__ == "__main__":
    main()
