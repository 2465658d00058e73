"""The seed's mask decoder: a global-convolution block at stride 16, refinement modules with skips from the encoder's
stride-8 and stride-4 features, an extra one without skip (stride 2), and a last convolution to one logit per pixel:
the output is half the crop's size.

Two instances exist: the propagation decoder (shared by mask and scribble propagation: its guide maps are the
propagated positive/negative scribbles, zero for plain mask propagation) and the interactive decoder (guide maps:
box, prior mask, positive and negative strokes).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import NetConfig
from .refine import GlobalConv, Refine, pool_to

PROPAGATION_GUIDES = 2  # propagated positive, negative scribbles
INTERACTIVE_GUIDES = 4  # box, prior, positive, negative strokes


class MaskDecoder(nn.Module):
    def __init__(self, top_channels: int, skip_channels: tuple[int, int], widths: tuple[int, int, int],
                 guide_channels: int, gc_kernel: int) -> None:
        super().__init__()
        self.guide_channels = guide_channels
        self.top = GlobalConv(top_channels + guide_channels, widths[0], gc_kernel)
        self.refine1 = Refine(widths[0], widths[0], skip_channels[0], guide_channels)  # 16 -> 8
        self.refine2 = Refine(widths[0], widths[1], skip_channels[1], guide_channels)  # 8 -> 4
        self.refine3 = Refine(widths[1], widths[2], 0, guide_channels)  # 4 -> 2, no skip connection
        self.predict = nn.Conv2d(widths[2], 1, 3, padding=1)

    @property
    def widths(self) -> tuple[int, int, int]:
        return self.refine1.cout, self.refine2.cout, self.refine3.cout

    def forward(self, top: torch.Tensor, skip8: torch.Tensor, skip4: torch.Tensor,
                guide: torch.Tensor | None = None) -> torch.Tensor:
        """top (B, C, H/16, W/16), skips at H/8 and H/4, guide (B, G, H, W) or None (zeros) -> logits (B, 1, H/2, W/2)."""
        if guide is None:
            guide = top.new_zeros((top.shape[0], self.guide_channels, skip4.shape[-2] * 4, skip4.shape[-1] * 4))
        if guide.shape[1] != self.guide_channels:
            raise ValueError(f"the decoder takes {self.guide_channels} guide channels, got {guide.shape[1]}")
        x = self.top(torch.cat([top, pool_to(guide, top.shape[-2:])], 1))
        x = self.refine1(x, skip8, guide)
        x = self.refine2(x, skip4, guide)
        x = self.refine3(x, None, guide)
        return self.predict(x)


def propagation_decoder(config: NetConfig) -> MaskDecoder:
    """Top input: the reference's and the target's stride-16 features, concatenated."""
    c4, c8, c16 = config.widths
    return MaskDecoder(2 * c16, (c8, c4), config.decoder, PROPAGATION_GUIDES, config.gc_kernel)


def interactive_decoder(config: NetConfig) -> MaskDecoder:
    """Top input: the frame's own stride-16 features."""
    c4, c8, c16 = config.widths
    return MaskDecoder(c16, (c8, c4), config.decoder, INTERACTIVE_GUIDES, config.gc_kernel)
