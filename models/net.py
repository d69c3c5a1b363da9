"""The segmentation network: a small U-Net sized for real time on a CPU.

Layout (``LiteUNet``): a strided stem halves the grid once (thin structures survive
because the decoder ends with a full-resolution refinement that sees the input again),
then ``depth`` encoder levels of two 3x3 conv + BN + ReLU with max-pool between them,
a mirrored decoder with skip connections and bilinear upsampling, and a softmax head.
All sizes come from one dict (``architecture`` in the model card), so the torch backend
rebuilds exactly the network whose weights the ONNX file holds.

Needs torch (the ``train`` extra); nothing else in :mod:`models` imports this module
unless torch is wanted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DEFAULT_ARCHITECTURE", "LiteUNet", "build_net", "fuse_batchnorm"]

#: The architecture every shipped model uses unless its card says otherwise.
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "name": "lite-unet",
    "widths": [16, 32, 48, 64],
    "refine_width": 8,
}


def _norm(c: int, fused: bool) -> nn.Module:
    return nn.Identity() if fused else nn.BatchNorm2d(c)


def _block(cin: int, cout: int, fused: bool) -> nn.Sequential:
    # Same module indices fused or not, so parameter names match across the two.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=fused), _norm(cout, fused), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=fused), _norm(cout, fused),
        nn.ReLU(inplace=True),
    )


class LiteUNet(nn.Module):
    """Small U-Net: (N, 1, H, W) float32 -> (N, n_classes, H, W) probabilities.

    H and W must be multiples of ``2 ** len(widths)``.

    Args:
        n_classes: output classes (background included).
        widths: channels per level; level 0 works at half resolution.
        refine_width: channels of the full-resolution refinement.
        fused: the deployment form: every BatchNorm folded into the conv before it
            (conv with bias, ``nn.Identity`` in the norm's place); see
            :func:`fuse_batchnorm`. Shipped ONNX files hold the fused network, so its
            initializer names are this module's ``state_dict`` keys.
    """

    def __init__(self, n_classes: int, widths: list[int], refine_width: int,
                 fused: bool = False) -> None:
        super().__init__()
        if n_classes < 2 or len(widths) < 2 or refine_width < 1:
            raise ValueError(f"bad architecture: n_classes={n_classes}, widths={widths}, "
                             f"refine_width={refine_width}")
        self.widths = list(widths)
        self.refine_width = refine_width
        self.n_classes = n_classes
        self.fused = fused
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=fused),
            _norm(widths[0], fused), nn.ReLU(inplace=True))
        self.enc = nn.ModuleList(
            [_block(widths[0], widths[0], fused)]
            + [_block(widths[i - 1], widths[i], fused) for i in range(1, len(widths))])
        self.dec = nn.ModuleList(
            [_block(widths[i + 1] + widths[i], widths[i], fused) for i in range(len(widths) - 1)])
        self.refine = nn.Sequential(
            nn.Conv2d(widths[0] + 1, refine_width, 3, padding=1, bias=fused),
            _norm(refine_width, fused), nn.ReLU(inplace=True),
            nn.Conv2d(refine_width, n_classes, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) normalised image -> (N, n_classes, H, W) logits."""
        skips = []
        h = self.stem(x)
        for i, block in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for i in range(len(self.dec) - 1, -1, -1):
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = self.dec[i](torch.cat([h, skips[i]], 1))
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.refine(torch.cat([h, x], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) normalised image -> (N, n_classes, H, W) softmax probabilities."""
        return torch.softmax(self.logits(x), dim=1)


def fuse_batchnorm(net: LiteUNet) -> LiteUNet:
    """The deployment form of a trained network: each BatchNorm (eval statistics) folded
    into the conv before it. Same outputs up to float rounding; eval mode.
    """
    out = LiteUNet(net.n_classes, net.widths, net.refine_width, fused=True)
    src = dict(net.named_modules())
    with torch.no_grad():
        for name, mod in out.named_modules():
            if not isinstance(mod, nn.Sequential):
                continue
            for i, child in enumerate(mod):
                if not isinstance(child, nn.Conv2d):
                    continue
                conv = src[f"{name}.{i}"]
                assert isinstance(conv, nn.Conv2d)
                bn = src[name][i + 1] if i + 1 < len(src[name]) else None
                w = conv.weight.detach().clone()
                b = (conv.bias.detach().clone() if conv.bias is not None
                     else torch.zeros(w.shape[0]))
                if isinstance(bn, nn.BatchNorm2d):
                    assert bn.running_var is not None and bn.running_mean is not None
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    w = w * scale[:, None, None, None]
                    b = (b - bn.running_mean) * scale + bn.bias
                child.weight.copy_(w)
                assert child.bias is not None
                child.bias.copy_(b)
    return out.eval()


def build_net(architecture: dict[str, Any], n_classes: int, *, fused: bool = False) -> LiteUNet:
    """Build the network a model card's ``architecture`` describes (``fused``: the
    deployment form whose weights the ONNX file holds).

    Raises:
        ValueError: unknown architecture name or bad sizes.
    """
    if architecture.get("name") != "lite-unet":
        raise ValueError(f"unknown architecture {architecture.get('name')!r} (known: lite-unet)")
    widths = architecture.get("widths")
    refine = architecture.get("refine_width")
    if not isinstance(widths, list) or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"architecture.widths must be a list of positive ints, got {widths!r}")
    if not isinstance(refine, int):
        raise ValueError(f"architecture.refine_width must be an int, got {refine!r}")
    return LiteUNet(n_classes, widths, refine, fused=fused)
