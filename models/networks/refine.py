"""Refinement modules (RGMP's, as in the seed's Fig. 1): upsample the coarse decoder features x2, add a convolution
of the encoder's skip features, then a residual block; the last module has no skip connection (it works at stride 2,
where the encoder has none). RGMP also puts a residual block on the skip branch: one convolution here halves the cost.

Both kinds can also take `guide` maps (box, prior, scribbles), pooled to their scale and concatenated to the skip
branch: with a frozen encoder, this is how user input reaches the interactive decoder at every scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import ResBlock, conv_bn


class GlobalConv(nn.Module):
    """RGMP's global convolution block: (k x 1 then 1 x k) + (1 x k then k x 1), then a residual block."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        p = k // 2
        self.left = nn.Sequential(nn.Conv2d(cin, cout, (k, 1), padding=(p, 0)),
                                  nn.Conv2d(cout, cout, (1, k), padding=(0, p)))
        self.right = nn.Sequential(nn.Conv2d(cin, cout, (1, k), padding=(0, p)),
                                   nn.Conv2d(cout, cout, (k, 1), padding=(p, 0)))
        self.res = ResBlock(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(F.relu(self.left(x) + self.right(x)))


class Refine(nn.Module):
    """up2(x) [+ conv(skip ++ guide) -> residual block] -> residual block, `cout` channels at twice x's size.

    skip_channels=0 gives the seed's extra module without a skip connection (guide maps, if any, still enter)."""

    def __init__(self, cin: int, cout: int, skip_channels: int = 0, guide_channels: int = 0) -> None:
        super().__init__()
        self.cout = cout
        self.skip_channels = skip_channels
        self.guide_channels = guide_channels
        self.project = conv_bn(cin, cout, 1) if cin != cout else nn.Identity()
        side = skip_channels + guide_channels
        self.side = nn.Sequential(conv_bn(side, cout), nn.ReLU(inplace=True)) if side else None
        self.out = ResBlock(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, guide: torch.Tensor | None = None,
                ) -> torch.Tensor:
        size = (x.shape[-2] * 2, x.shape[-1] * 2) if skip is None else skip.shape[-2:]
        x = F.interpolate(self.project(x), size=size, mode="bilinear", align_corners=False)
        parts = []
        if self.skip_channels:
            if skip is None:
                raise ValueError("this refinement module needs its skip connection (encoder features)")
            parts.append(skip)
        if self.guide_channels:
            if guide is None:
                raise ValueError(f"this refinement module needs {self.guide_channels} guide channels")
            parts.append(pool_to(guide, size))
        if parts:
            x = x + self.side(torch.cat(parts, 1))
        return self.out(x)


def pool_to(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Guide maps at another scale: max-pooled, so thin strokes survive downsampling."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.adaptive_max_pool2d(maps, tuple(size))
