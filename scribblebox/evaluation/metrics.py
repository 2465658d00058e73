"""DAVIS region (J) and boundary (F) measures, numbers comparable with the DAVIS toolkits' `db_eval_iou` / `f_measure`.

J is the IoU of the masks; F matches the one-pixel boundaries of mask and ground truth within a tolerance of
`bound_th` of the image diagonal (a disk dilation) and combines precision and recall. Empty masks follow DAVIS:
two empty masks score 1, an empty mask against a non-empty one scores 0.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BOUND_TH = 0.008


def _check(mask: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask, gt = np.asarray(mask, dtype=bool), np.asarray(gt, dtype=bool)
    if mask.shape != gt.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and ground truth {gt.shape} must be 2-D and of the same size")
    return mask, gt


def jaccard(mask: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity: |mask ∩ gt| / |mask ∪ gt|; 1 when both are empty (as DAVIS)."""
    mask, gt = _check(mask, gt)
    union = np.count_nonzero(mask | gt)
    return 1.0 if union == 0 else np.count_nonzero(mask & gt) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask, exactly as DAVIS' `_seg2bmap` at the mask's own size.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour.
    """
    seg = np.asarray(mask, dtype=bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: the (2r+1)² square's pixels within `radius` of the centre, as uint8."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Matching distance in pixels: `bound_th` itself when >= 1, else that fraction of the diagonal, rounded up."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def f_measure(mask: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure: 2PR / (P + R) of boundary pixels matched within the tolerance disk."""
    mask, gt = _check(mask, gt)
    fg_b, gt_b = seg2bmap(mask), seg2bmap(gt)
    n_fg, n_gt = np.count_nonzero(fg_b), np.count_nonzero(gt_b)
    if n_fg == 0 or n_gt == 0:
        return 1.0 if n_fg == n_gt else 0.0  # DAVIS: P/R of (1, 0) or (0, 1) give F = 0; both empty give 1
    kernel = disk(boundary_tolerance(mask.shape, bound_th))
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(fg_b & gt_dil) / n_fg
    recall = np.count_nonzero(gt_b & fg_dil) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def jf(mask: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(J, F) of one frame."""
    return jaccard(mask, gt), f_measure(mask, gt)
