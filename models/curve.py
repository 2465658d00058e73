"""Fit the fewest keyframes to a dense run of boxes.

The platforms draw linear interpolation between keyframes, so a keyframe set is good when that
interpolation stays within an IoU tolerance of the dense track on every (trusted) frame.
"""
from __future__ import annotations

import numpy as np

from .geometry import from_params, interpolate, iou, to_params


def smooth_outliers(boxes: np.ndarray, scores: np.ndarray, min_score: float = 0.2, window: int = 5) -> np.ndarray:
    """Replace single-frame jumps and low-confidence frames by a running median, keeping the ends fixed."""
    n = len(boxes)
    if n < 3:
        return boxes.copy()
    params = to_params(boxes)
    half = window // 2
    padded = np.concatenate([np.repeat(params[:1], half, 0), params, np.repeat(params[-1:], half, 0)])
    median = np.stack([np.median(padded[i : i + window], axis=0) for i in range(n)])
    med_boxes = from_params(median)
    jump = iou(boxes, med_boxes) < 0.5
    replace = (jump | (scores < min_score))
    replace[0] = replace[-1] = False
    out = boxes.copy()
    out[replace] = med_boxes[replace]
    return out


def _fits(boxes: np.ndarray, trusted: np.ndarray, i: int, j: int, tolerance: float) -> bool:
    if j - i < 2:
        return True
    inner = np.arange(i + 1, j)
    line = interpolate(inner, boxes[i], boxes[j], i, j)
    ok = iou(line, boxes[inner]) >= tolerance
    return bool(np.all(ok | ~trusted[inner]))


def fit_keyframes(boxes: np.ndarray, tolerance: float = 0.9, trusted: np.ndarray | None = None, lookahead: int = 8) -> list[int]:
    """Indices (into `boxes`) of keyframes; the first and last index are always kept.

    Greedy furthest-reach: from each keyframe take the furthest next one whose interpolation fits. Fit is not
    monotone in the distance (a turn can be followed by a straight return), so the scan continues `lookahead`
    frames past the first misfit.
    """
    n = len(boxes)
    if n == 0:
        return []
    if n == 1:
        return [0]
    trusted = np.ones(n, dtype=bool) if trusted is None else trusted
    keys = [0]
    i = 0
    while i < n - 1:
        best = i + 1
        misses = 0
        for j in range(i + 2, n):
            if _fits(boxes, trusted, i, j, tolerance):
                best, misses = j, 0
            else:
                misses += 1
                if misses > lookahead:
                    break
        keys.append(best)
        i = best
    return keys
