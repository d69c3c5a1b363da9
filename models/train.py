"""Training a segmentation network on arrays, deterministic, on the CPU.

The data arrive already on the model grid and normalised (the caller builds them, e.g.
from the simulator); this module knows nothing of where they came from. Same seed,
same data, same thread count -> the same weights: one seeded generator drives the batch
order, crops, flips and intensity jitter, and torch runs with deterministic algorithms.

Loss: class-weighted cross-entropy plus soft Dice over the foreground classes (thin
needles are a fraction of a percent of the pixels; Dice keeps them from being ignored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from guidance.io.config_schema import ConfigError, check_fields, meta, setting
from models.net import DEFAULT_ARCHITECTURE, LiteUNet, build_net

__all__ = ["TrainConfig", "TrainResult", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (recorded in the model card); each field documents itself.
    ``class_weights`` None: 1 for background, 4 for the first foreground class, 2 for
    the others."""

    steps: int = setting(2000, "optimiser steps", ge=1, le=10_000_000)
    batch: int = setting(8, "frames per step", ge=1, le=4096)
    crop: int = setting(128, "side of the random square crop (a multiple of 16)",
                        unit="px", ge=16, le=4096)
    lr: float = setting(3e-3, "peak learning rate (AdamW, one-cycle cosine schedule)",
                        ge=0, le=1)
    weight_decay: float = setting(1e-4, "AdamW weight decay", ge=0, le=1)
    class_weights: tuple[float, ...] | None = setting(
        None, "cross-entropy weight per class (null: the default weights)", ge=0, le=1000)
    dice_weight: float = setting(1.0, "weight of the soft-Dice term", ge=0, le=1000)
    flip_lr: bool = setting(True, "random horizontal flips")
    flip_ud: bool = setting(False, "random vertical flips")
    gain_jitter: float = setting(
        0.15, "random multiplicative jitter of the normalised image (+- fraction)",
        ge=0, le=1)
    noise_std: float = setting(0.05, "std of added Gaussian noise on the normalised image",
                               ge=0, le=10)
    seed: int = setting(0, "seed of everything random in training", ge=0, le=2**63 - 1)
    threads: int = setting(2, "torch intra-op threads", ge=1, le=1024)
    architecture: dict[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_ARCHITECTURE),
        metadata=meta("network description (models.net.build_net)"))

    def __post_init__(self) -> None:
        check_fields(self, "train")
        if self.crop % 16:
            raise ConfigError(f"expected a multiple of 16, got {self.crop}", key="crop",
                              section="train")


@dataclass(frozen=True)
class TrainResult:
    """A trained network (train form, eval mode) and how training went.

    Attributes:
        net: the trained network (BatchNorm not yet fused).
        losses: (steps,) loss per step.
        seconds: wall time, s.
        config: the settings used.
    """

    net: LiteUNet
    losses: np.ndarray
    seconds: float
    config: TrainConfig

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for the model card."""
        k = max(1, len(self.losses) // 20)
        return {"config": asdict(self.config), "wall_s": round(self.seconds, 1),
                "loss_first": float(self.losses[:k].mean()),
                "loss_last": float(self.losses[-k:].mean())}


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    prob = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()[:, 1:]
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def train(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    config: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a :class:`~models.net.LiteUNet`.

    Args:
        images: (N, R, C) float32, normalised, on the model grid.
        labels: (N, R, C) uint8 class ids < n_classes.
        n_classes: classes including background.
        config: settings.
        progress: ``progress(step, steps, loss)`` after every step.

    Returns:
        The trained network and its loss curve.

    Raises:
        ValueError: shapes disagree, a label is out of range, or frames are smaller
            than the crop.
    """
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"images (N, R, C) and labels of the same shape needed, got "
                         f"{images.shape} and {labels.shape}")
    if int(labels.max()) >= n_classes:
        raise ValueError(f"label {int(labels.max())} >= n_classes {n_classes}")
    _n, rows, cols = images.shape
    c = config.crop
    if rows < c or cols < c:
        raise ValueError(f"frames {rows}x{cols} smaller than crop {c}")
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(images, labels, n_classes, config, progress)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(images: np.ndarray, labels: np.ndarray, n_classes: int, config: TrainConfig,
           progress: Callable[[int, int, float], None] | None) -> TrainResult:
    n, rows, cols = images.shape
    c = config.crop
    rng = np.random.default_rng(config.seed)
    net = build_net(config.architecture, n_classes)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps,
                                                pct_start=0.1)
    cw = config.class_weights or (1.0, 4.0) + (2.0,) * (n_classes - 2)
    if len(cw) != n_classes:
        raise ValueError(f"class_weights needs {n_classes} values, got {len(cw)}")
    weight = torch.tensor(cw, dtype=torch.float32)
    xb = np.empty((config.batch, 1, c, c), np.float32)
    yb = np.empty((config.batch, c, c), np.int64)
    losses = np.empty(config.steps, np.float64)
    t0 = time.perf_counter()
    for step in range(config.steps):
        idx = rng.integers(0, n, config.batch)
        for b, i in enumerate(idx):
            r0 = int(rng.integers(0, rows - c + 1))
            c0 = int(rng.integers(0, cols - c + 1))
            img = images[i, r0:r0 + c, c0:c0 + c]
            lab = labels[i, r0:r0 + c, c0:c0 + c]
            if config.flip_lr and rng.random() < 0.5:
                img, lab = img[:, ::-1], lab[:, ::-1]
            if config.flip_ud and rng.random() < 0.5:
                img, lab = img[::-1], lab[::-1]
            gain = 1.0 + config.gain_jitter * (2 * rng.random() - 1)
            xb[b, 0] = img * gain
            if config.noise_std > 0:
                xb[b, 0] += rng.normal(0.0, config.noise_std, (c, c)).astype(np.float32)
            yb[b] = lab
        x = torch.from_numpy(xb)
        y = torch.from_numpy(yb)
        logits = net.logits(x)
        loss = F.cross_entropy(logits, y, weight=weight)
        if config.dice_weight > 0:
            loss = loss + config.dice_weight * _soft_dice_loss(logits, y, n_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses[step] = float(loss.detach())
        if progress is not None:
            progress(step + 1, config.steps, losses[step])
    net.eval()
    return TrainResult(net, losses, time.perf_counter() - t0, config)
