"""Stage 3 samples: what a user does to one frame (box, strokes on the current mask's errors) next to a reference
frame of the same sequence, for the interactive decoder, the scribble embedding head and the propagation decoder's
scribble inputs at once (two encoder passes serve all three).

- With probability `same_frame` the reference is the target frame itself under another affine transform and crop:
  the correspondence of their locations is then known exactly (the `correspondence` matrix), which the batch-hard
  triplet loss needs; other samples pair two frames of the video and only train the decoders.
- Strokes are simulated on crops: a polyline through the core of the largest false-negative (positive stroke) and
  false-positive (negative stroke) region of the prior, or inside the object and inside the box's background when
  there is no prior.
- The propagation decoder's guide maps imitate strokes carried by embedding matching: the strokes' stride-8 cells,
  some dropped. The thin strokes themselves are what the scribble consistency loss checks.
"""
from __future__ import annotations

import cv2
import numpy as np

from scribblebox.models.networks.crops import MARGIN, box_map, crop_matrix

from .clips import VideoFrames, affine, box_centre, crop_object, degrade

CELL = 8  # the embedding's stride: propagated strokes are whole cells


def region_stroke(region: np.ndarray, rng: np.random.Generator, min_area: int = 12) -> np.ndarray | None:
    """A stroke (uint8 0/1 map) through the core of the region's largest piece, or None if it is too small."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < min_area:
        return None
    piece = (labels == best).astype(np.uint8)
    depth = cv2.distanceTransform(piece, cv2.DIST_L2, 3)
    ys, xs = np.nonzero(depth >= max(1.0, 0.5 * depth.max()))
    pick = rng.choice(len(xs), size=min(len(xs), int(rng.integers(1, 5))), replace=False)
    pts = np.stack([xs[pick], ys[pick]], 1).astype(np.float64)
    if len(pts) > 1:  # in order along the piece's main axis, so the polyline does not zigzag
        centred = pts - pts.mean(0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        pts = pts[np.argsort(centred @ axis)]
    stroke = np.zeros_like(piece)
    thickness = int(np.clip(depth.max() * 0.6, 1, max(2, region.shape[0] // 40)))
    cv2.polylines(stroke, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], False, 1, thickness)
    if len(pts) == 1:
        cv2.circle(stroke, tuple(int(v) for v in pts[0]), max(thickness // 2, 1), 1, -1)
    return stroke & piece


def user_strokes(mask: np.ndarray, prior: np.ndarray | None, box: np.ndarray, rng: np.random.Generator,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative stroke maps (float32) a user would draw to correct `prior` (or a box alone)."""
    gt = mask > 0.5
    if prior is not None:
        missed, extra = gt & (prior < 0.5), (prior > 0.5) & ~gt
    elif rng.random() < 0.5:
        missed, extra = np.zeros_like(gt), np.zeros_like(gt)  # a box alone, no strokes
    else:
        missed, extra = gt, (box > 0.5) & ~gt
    maps = []
    for region in (missed, extra):
        stroke = region_stroke(region, rng) if rng.random() < 0.9 else None
        maps.append(np.zeros(gt.shape, np.float32) if stroke is None else stroke.astype(np.float32))
    return maps[0], maps[1]


def cells(strokes: np.ndarray, rng: np.random.Generator, drop: float = 0.3) -> np.ndarray:
    """The stride-8 cells a stroke map touches, as a full-size map, each cell dropped with probability up to `drop`."""
    s = strokes.shape[0] // CELL
    grid = strokes[: s * CELL, : s * CELL].reshape(s, CELL, s, CELL).max(axis=(1, 3))
    grid = grid * (rng.random(grid.shape) >= rng.uniform(0, drop))
    return np.kron(grid, np.ones((CELL, CELL), np.float32)).astype(np.float32)


def crop_box_map(size: int, margin: float) -> np.ndarray:
    """The box map of a crop made from that box: the same rectangle for every box (the crop follows the box)."""
    square = np.array([0.0, 0.0, 100.0, 100.0])
    return box_map(square, crop_matrix(square, size, margin), size)


def interaction_sample(bank: list[VideoFrames], rng: np.random.Generator, size: int, margin: float = MARGIN,
                       same_frame: float = 0.5, max_gap: int = 5) -> dict[str, np.ndarray]:
    """ref_image/ref_mask (reference frame, true mask), image/mask (target), box, prior (zeros: none), positive and
    negative strokes, guide (2, S, S) propagated-stroke cells (zeros half the time), correspondence (3, 3): target
    crop pixel -> reference crop pixel (meaningful when same == 1)."""
    seq = bank[int(rng.integers(len(bank)))]
    b = int(seq.present[rng.integers(len(seq.present))])
    same = rng.random() < same_frame
    a = b
    if not same:
        near = seq.present[(np.abs(seq.present - b) <= max_gap) & (seq.present != b)]
        a = int(near[rng.integers(len(near))]) if len(near) else b
        same = a == b
    width = seq.frames[0].shape[1]
    flip = width if rng.random() < 0.5 else None
    crops = []
    for f, strength in ((a, 0.5), (b, 1.0)):
        centre, extent = box_centre(seq.masks[f])
        move = affine(rng, centre, 15 * strength, (1 - 0.15 * strength, 1 + 0.15 * strength),
                      0.1 * strength * float(extent.max()), 0.1 * strength, flip)
        crops.append(crop_object(seq.frames[f], seq.masks[f], move, rng, size, margin))
    (ref_image, ref_mask, ref_matrix), (image, mask, matrix) = crops
    box = crop_box_map(size, margin)
    prior = degrade(mask, rng, 1.5) if rng.random() < 0.6 else None
    positive, negative = user_strokes(mask, prior, box, rng)
    guide = np.zeros((2, size, size), np.float32)
    if rng.random() < 0.5:
        guide = np.stack([cells(positive, rng), cells(negative, rng)])
    return {"ref_image": ref_image, "ref_mask": ref_mask, "image": image, "mask": mask, "box": box,
            "prior": np.zeros_like(mask) if prior is None else prior, "positive": positive, "negative": negative,
            "guide": guide, "same": np.float32(same),
            "correspondence": (ref_matrix @ np.linalg.inv(matrix)).astype(np.float32)}
