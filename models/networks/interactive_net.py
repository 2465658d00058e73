"""Interactive segmentation of one frame: crop + box + positive/negative stroke maps (+ prior mask) -> mask logits.

The encoder's mask channel carries the prior where there is one and the box rectangle otherwise (both are rough
masks, as the propagation training taught it); the interactive decoder additionally sees all four maps at every
scale, so the strokes steer the result even though the encoder is frozen when this decoder trains.
"""
from __future__ import annotations

import torch
from torch import nn

from .decoders import MaskDecoder
from .encoder import Encoder, Features
from .propagation_net import share


def encoder_mask(box_map: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Per sample: the prior if it has any foreground, else the box map."""
    has_prior = prior.flatten(1).amax(1) > 0
    return torch.where(has_prior[:, None, None, None], prior, box_map)


class InteractiveNet(nn.Module):
    def __init__(self, encoder: Encoder, decoder: MaskDecoder) -> None:
        super().__init__()
        share(self, encoder)
        self.decoder = decoder

    def decode(self, features: Features, box_map: torch.Tensor, prior: torch.Tensor, positive: torch.Tensor,
               negative: torch.Tensor) -> torch.Tensor:
        f4, f8, f16 = features
        guide = torch.cat([box_map, prior, positive, negative], 1).to(torch.float32)
        return self.decoder(f16, f8, f4, guide)

    def forward(self, image: torch.Tensor, box_map: torch.Tensor, prior: torch.Tensor, positive: torch.Tensor,
                negative: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W); the four maps (B, 1, H, W) in [0, 1] (prior all zero: none) -> logits (B, 1, H/2, W/2)."""
        features = self.encoder(image, encoder_mask(box_map, prior))
        return self.decode(features, box_map, prior, positive, negative)
