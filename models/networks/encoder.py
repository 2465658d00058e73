"""The shared image encoder: a small ResNet-like CNN on a box crop (BGR + one mask channel), no downloaded weights.

It returns features at strides 4, 8 and 16 of the crop; the decoders refine from 16 down to 2 (the seed's output
is half the input size). Images enter as uint8 or [0, 1] floats and are normalised here, so callers never do it.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import NetConfig

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # strides 4, 8, 16

MEAN, STD = 0.45, 0.225  # of BGR values in [0, 1]


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class ResBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = conv_bn(cout, cout, 3)
        self.skip = conv_bn(cin, cout, 1, stride) if (cin != cout or stride != 1) else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.b(self.act(self.a(x))) + self.skip(x))


class Encoder(nn.Module):
    """Stem (stride 2) then three stages (strides 4, 8, 16), each opening with a strided residual block."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(conv_bn(config.in_channels, config.stem, 3, 2), nn.ReLU(inplace=True),
                                  conv_bn(config.stem, config.stem), nn.ReLU(inplace=True))
        stages, cin = [], config.stem
        for width, depth in zip(config.widths, config.blocks):
            blocks = [ResBlock(cin, width, 2)] + [ResBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)

    @property
    def channels(self) -> tuple[int, int, int]:
        return self.config.widths

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> Features:
        """image (B, 3, H, W) BGR uint8 or float in [0, 1]; mask (B, 1, H, W) in [0, 1]; H, W multiples of 16."""
        if image.shape[-2] % 16 or image.shape[-1] % 16:
            raise ValueError(f"crop size {tuple(image.shape[-2:])} must be a multiple of 16 on both sides")
        x = torch.cat([normalise(image), mask.to(torch.float32) * 2 - 1], 1)
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out[0], out[1], out[2]


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) BGR -> zero-centred floats."""
    x = image.to(torch.float32)
    if image.dtype == torch.uint8:
        x = x / 255.0
    return (x - MEAN) / STD
