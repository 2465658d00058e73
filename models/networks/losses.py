"""Training losses: the seed's batch-hard triplet loss (scribble embeddings), the scribble consistency loss
(predictions must agree with the user's strokes; without it the interactive net learns to ignore them), and the
mask loss (BCE + soft IoU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(emb_c: torch.Tensor, emb_r: torch.Tensor, positive: torch.Tensor,
                       negative: torch.Tensor | None = None, margin: float = 0.5, hinge: bool = False,
                       reduction: str = "sum") -> torch.Tensor:
    """Seed eq. 1-2: for each location f_c of frame c, min ||f_c - f_r+||^2 over its positives in frame r, minus
    min ||f_c - f_r-||^2 over its negatives, plus `margin` (alpha); summed over the locations of c.

    emb_c (B, N, D), emb_r (B, M, D): embeddings of the locations of frames c and r (the caller flattens maps).
    positive (B, N, M) bool: which locations of r correspond to each location of c (the caller knows the geometry);
    negative: which count as negatives (default: every non-positive). Locations without any positive or negative
    are left out. hinge=True clamps each term at 0 as in Hermans et al. (the seed's formula has no clamp).
    reduction: "sum" (the seed), "mean" over the counted locations, or "none" ((B, N), NaN where left out).
    """
    if emb_c.dim() != 3 or emb_r.dim() != 3:
        raise ValueError(f"embeddings must be (B, N, D) and (B, M, D), got {tuple(emb_c.shape)} and {tuple(emb_r.shape)}")
    expected = (emb_c.shape[0], emb_c.shape[1], emb_r.shape[1])
    if tuple(positive.shape) != expected:
        raise ValueError(f"positive must be (B, N, M) = {expected}, got {tuple(positive.shape)}")
    positive = positive.to(torch.bool)
    negative = ~positive if negative is None else negative.to(torch.bool)
    dist = torch.cdist(emb_c, emb_r).pow(2)  # (B, N, M) squared distances
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    hardest_pos = torch.where(positive, dist, inf).amin(2)
    hardest_neg = torch.where(negative, dist, inf).amin(2)
    counted = torch.isfinite(hardest_pos) & torch.isfinite(hardest_neg)
    terms = torch.where(counted, hardest_pos - hardest_neg + margin, torch.zeros_like(hardest_pos))
    if hinge:
        terms = terms.clamp(min=0)
    if reduction == "none":
        return torch.where(counted, terms, torch.full_like(terms, float("nan")))
    total = terms.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / counted.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")


def scribble_consistency(logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """BCE on the stroked pixels only (positive -> 1, negative -> 0), averaged over them; 0 when there are none.
    Maps (B, 1, h, w) at the logits' size (see `pool_strokes`)."""
    pos, neg = positive > 0.5, negative > 0.5
    counted = pos | neg
    target = pos.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * counted).sum() / counted.sum().clamp(min=1)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, iou_weight: float = 1.0) -> torch.Tensor:
    """BCE plus (1 - soft IoU) per sample, averaged over the batch: BCE learns the pixels, IoU keeps small objects
    from being drowned by background. target (B, 1, h, w) in [0, 1] at the logits' size."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + iou_weight * (1 - soft_iou(logits.sigmoid(), target)).mean()


def soft_iou(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-sample soft IoU sum(p t) / sum(p + t - p t), smoothed by eps (an empty prediction of an empty mask is 1)."""
    inter = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1)
    return (inter + eps) / (union + eps)


def half_size(target: torch.Tensor) -> torch.Tensor:
    """A crop-sized soft mask (B, 1, H, W) at the networks' output size (H/2, W/2), by area averaging."""
    return F.avg_pool2d(target.to(torch.float32), 2)


def pool_strokes(strokes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Stroke maps at another size by max-pooling, so thin strokes survive."""
    return F.adaptive_max_pool2d(strokes.to(torch.float32), size)


def iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of the thresholded prediction (0.5) with the target (> 0.5); 1 when both are empty."""
    pred, gt = logits > 0, target > 0.5
    inter = (pred & gt).flatten(1).sum(1).to(torch.float32)
    union = (pred | gt).flatten(1).sum(1).to(torch.float32)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
