"""Scribble propagation's embedding head: per-location unit vectors at stride 8 on the shared encoder's features,
trained with the seed's batch-hard triplet loss so that corresponding locations of two frames are nearest neighbours.

A stroke on frame r is carried to frame c by matching: a location of c becomes a positive (negative) propagated
scribble when its nearest stroke embedding of r is positive (negative) and nearer than `threshold`. The propagated
maps are the propagation decoder's guide channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import Encoder, Features
from .propagation_net import share

EMBED_STRIDE = 8


class EmbeddingHead(nn.Module):
    def __init__(self, c8: int, c16: int, dims: int) -> None:
        super().__init__()
        hidden = max(dims, c8)
        self.body = nn.Sequential(nn.Conv2d(c8 + c16, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, dims, 1))

    def forward(self, f8: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(self.body(torch.cat([f8, up], 1)), dim=1)


class ScribbleNet(nn.Module):
    def __init__(self, encoder: Encoder, head: EmbeddingHead) -> None:
        super().__init__()
        share(self, encoder)
        self.head = head

    def embed(self, features: Features) -> torch.Tensor:
        """Unit embeddings (B, D, H/8, W/8) from encoder features already computed."""
        return self.head(features[1], features[2])

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embed(self.encoder(image, mask))


def stroke_embeddings(embedding: torch.Tensor, strokes: torch.Tensor) -> torch.Tensor:
    """(K, D) embeddings of the stride-8 cells a stroke map (H, W) touches; embedding is (D, H/8, W/8)."""
    cells = F.adaptive_max_pool2d(strokes[None, None].to(torch.float32), embedding.shape[-2:])[0, 0] > 0
    return embedding[:, cells].T


def match_strokes(embedding: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                  threshold: float) -> torch.Tensor:
    """Propagated stroke maps (2, h, w) for a frame's embedding (D, h, w) from another frame's positive (Kp, D) and
    negative (Kn, D) stroke embeddings: each location takes the label of its nearest stroke cell within `threshold`
    (squared distance)."""
    flat = embedding.flatten(1).T  # (N, D)
    inf = flat.new_full((flat.shape[0],), float("inf"))
    d_pos = torch.cdist(flat, positive).pow(2).amin(1) if len(positive) else inf
    d_neg = torch.cdist(flat, negative).pow(2).amin(1) if len(negative) else inf
    pos = (d_pos < threshold) & (d_pos < d_neg)
    neg = (d_neg < threshold) & (d_neg <= d_pos)
    return torch.stack([pos, neg]).reshape(2, *embedding.shape[-2:]).to(torch.float32)
