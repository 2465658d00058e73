"""One training (or validation) step per stage: a batch of crops in, (loss, per-batch metrics) out.

Batches come from the clip generators as tensors: images (B, S, S, 3) uint8, masks (B, S, S) float; they are moved
to the device here and put channel-first. Every prediction is at half the crop's size, so targets are halved too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scribblebox.models.networks.losses import (
    batch_hard_triplet,
    half_size,
    iou,
    mask_loss,
    pool_strokes,
    scribble_consistency,
)
from scribblebox.models.networks.model import ScribbleBoxModel
from scribblebox.models.networks.scribble_net import EMBED_STRIDE

Batch = dict[str, torch.Tensor]
TRIPLET_MARGIN = 0.5  # alpha of the seed's eq. 2, for unit embeddings (squared distances in [0, 4])
SCRIBBLE_WEIGHT = 1.0
TRIPLET_WEIGHT = 1.0


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Images channel-first (uint8 stays uint8: the encoder normalises on the device), masks (B, 1, S, S)."""
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if value.dtype == torch.uint8 and value.shape[-1] == 3:
            value = value.movedim(-1, -3)
        elif value.dtype == torch.float32 and value.dim() == 3 and key != "correspondence":
            value = value.unsqueeze(1)
        out[key] = value
    return out


def synthetic_step(model: ScribbleBoxModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1: propagate the reference's mask to the target, given its degraded previous mask."""
    logits = model.propagation(batch["ref_image"], batch["ref_mask"], batch["image"], batch["previous"])
    target = half_size(batch["mask"])
    loss = mask_loss(logits, target)
    return loss, {"loss": loss.item(), "iou": iou(logits, target).mean().item()}


def video_step(model: ScribbleBoxModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2: frame 0 is the reference; frame 1 is predicted from frame 0's mask, and each later frame from the
    previous prediction moved into its crop (detached), as inference chains them."""
    images, masks = batch["images"], batch["masks"]  # (B, L, 3, S, S) uint8, (B, L, S, S)
    size = images.shape[-1]
    reference = model.propagation.reference(images[:, 0], masks[:, :1])
    previous, total, ious = batch["previous"], 0.0, []
    for k in range(1, images.shape[1]):
        logits, _ = model.propagation.step(reference, images[:, k], previous)
        target = half_size(masks[:, k : k + 1])
        total = total + mask_loss(logits, target)
        ious.append(iou(logits, target).mean().item())
        if k + 1 < images.shape[1]:
            soft = F.interpolate(logits.detach().sigmoid(), size=(size, size), mode="bilinear", align_corners=False)
            grid = F.affine_grid(batch["theta"][:, k - 1], list(soft.shape), align_corners=False)
            previous = F.grid_sample(soft, grid, align_corners=False, padding_mode="zeros")
    loss = total / (images.shape[1] - 1)
    return loss, {"loss": loss.item(), "iou": ious[0], "iou_last": ious[-1]}


def correspondence(matrix: torch.Tensor, same: torch.Tensor, cells: tuple[int, int], radius: float = 1.0,
                   ignore: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative (B, N, N) location pairs of two crops' stride-8 grids: the reference cells within
    `radius` cells of where the target cell lands (matrix: target crop pixel -> reference crop pixel) are positive,
    those beyond `ignore` cells negative (neighbours in between look alike at stride 8: neither). Samples whose two
    crops are different frames (same == 0) get no positives, so the loss leaves them out."""
    h, w = cells
    ys, xs = torch.meshgrid(torch.arange(h, device=matrix.device), torch.arange(w, device=matrix.device), indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], 1).to(torch.float32) * EMBED_STRIDE + (EMBED_STRIDE - 1) / 2
    landed = centres @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]  # (B, N, 2)
    dist = torch.cdist(landed, centres.expand(matrix.shape[0], -1, -1)) / EMBED_STRIDE
    positive = (dist <= radius) & (same[:, None, None] > 0.5)
    return positive, dist > ignore


def interactive_step(model: ScribbleBoxModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 3 (encoder frozen): the interactive decoder (mask + scribble consistency), the embedding head (batch-hard
    triplet on same-frame pairs) and the propagation decoder with propagated-stroke guides (mask + consistency)."""
    box, prior = batch["box"], batch["prior"]
    has_prior = prior.flatten(1).amax(1) > 0
    channel = torch.where(has_prior[:, None, None, None], prior, box)
    with torch.no_grad():
        ref_features = model.encoder(batch["ref_image"], batch["ref_mask"])
        features = model.encoder(batch["image"], channel)
    target = half_size(batch["mask"])
    small = target.shape[-2:]
    strokes = [pool_strokes(batch["positive"], small), pool_strokes(batch["negative"], small)]

    inter = model.interactive.decode(features, box, prior, batch["positive"], batch["negative"])
    inter_loss = mask_loss(inter, target) + SCRIBBLE_WEIGHT * scribble_consistency(inter, *strokes)

    guide = batch["guide"]  # (B, 2, S, S) propagated-stroke cells, zero for plain mask propagation
    prop = model.propagation.decode(ref_features[2], features, guide)
    guided = guide.flatten(1).amax(1) > 0
    prop_strokes = [s * guided[:, None, None, None] for s in strokes]
    prop_loss = mask_loss(prop, target) + SCRIBBLE_WEIGHT * scribble_consistency(prop, *prop_strokes)

    emb_c, emb_r = model.scribble.embed(features), model.scribble.embed(ref_features)
    positive, negative = correspondence(batch["correspondence"], batch["same"].flatten(), emb_c.shape[-2:])
    triplet = batch_hard_triplet(emb_c.flatten(2).transpose(1, 2), emb_r.flatten(2).transpose(1, 2), positive,
                                 negative, margin=TRIPLET_MARGIN, reduction="mean")
    loss = inter_loss + prop_loss + TRIPLET_WEIGHT * triplet
    return loss, {"loss": loss.item(), "iou": iou(inter, target).mean().item(),
                  "iou_prop": iou(prop, target).mean().item(), "triplet": triplet.item()}


STEPS = {"synthetic": synthetic_step, "video": video_step, "interactive": interactive_step}
