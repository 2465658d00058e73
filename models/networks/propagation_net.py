"""Mask propagation (RGMP-style, as the seed): the reference frame with its mask and the target frame with the previous
frame's mask go through the shared encoder; the propagation decoder turns both into the target's mask logits at half
the crop's size. The reference's features are computed once per chain (`reference`) and reused at every `step`.
"""
from __future__ import annotations

import torch
from torch import nn

from .decoders import MaskDecoder
from .encoder import Encoder, Features


def share(module: nn.Module, encoder: Encoder) -> None:
    """Keep a reference to the shared encoder without registering it again (the model owns it once, so its weights
    appear once in a state dict; moving the model moves it)."""
    module.__dict__["encoder"] = encoder


class PropagationNet(nn.Module):
    def __init__(self, encoder: Encoder, decoder: MaskDecoder) -> None:
        super().__init__()
        share(self, encoder)
        self.decoder = decoder

    def reference(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reference frame's stride-16 features (B, C, H/16, W/16)."""
        return self.encoder(image, mask)[2]

    def decode(self, reference: torch.Tensor, target: Features, guide: torch.Tensor | None = None) -> torch.Tensor:
        f4, f8, f16 = target
        return self.decoder(torch.cat([reference, f16], 1), f8, f4, guide)

    def step(self, reference: torch.Tensor, image: torch.Tensor, previous: torch.Tensor,
             guide: torch.Tensor | None = None) -> tuple[torch.Tensor, Features]:
        """One target frame: (logits (B, 1, H/2, W/2), its encoder features, for the scribble embedding head)."""
        features = self.encoder(image, previous)
        return self.decode(reference, features, guide), features

    def forward(self, ref_image: torch.Tensor, ref_mask: torch.Tensor, image: torch.Tensor, previous: torch.Tensor,
                guide: torch.Tensor | None = None) -> torch.Tensor:
        """Crops (B, 3, H, W) and masks (B, 1, H, W); guide (B, 2, H, W) propagated scribbles or None -> logits at H/2."""
        return self.step(self.reference(ref_image, ref_mask), image, previous, guide)[0]
