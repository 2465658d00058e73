"""Boxes as float arrays ``[x, y, w, h]`` in pixels (top-left corner, width, height); NaN rows mean "absent"."""
from __future__ import annotations

import numpy as np

Box = np.ndarray  # shape (4,), float64: x, y, w, h in pixels


def as_box(values) -> Box:
    box = np.asarray(values, dtype=np.float64).reshape(4)
    return box


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (..., 4) against (..., 4); 0 where either is absent (NaN) or empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    y2 = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return np.nan_to_num(out, nan=0.0)


def to_params(boxes: np.ndarray) -> np.ndarray:
    """(cx, cy, log w, log h): a space where blending and drift correction treat scale multiplicatively."""
    boxes = np.asarray(boxes, dtype=np.float64)
    w = np.maximum(boxes[..., 2], 1e-3)
    h = np.maximum(boxes[..., 3], 1e-3)
    return np.stack([boxes[..., 0] + w / 2, boxes[..., 1] + h / 2, np.log(w), np.log(h)], axis=-1)


def from_params(params: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=np.float64)
    w = np.exp(params[..., 2])
    h = np.exp(params[..., 3])
    return np.stack([params[..., 0] - w / 2, params[..., 1] - h / 2, w, h], axis=-1)


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip a box to the frame; the result may be empty (w or h == 0)."""
    x1 = np.clip(box[..., 0], 0, width)
    y1 = np.clip(box[..., 1], 0, height)
    x2 = np.clip(box[..., 0] + box[..., 2], 0, width)
    y2 = np.clip(box[..., 1] + box[..., 3], 0, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Tight box of the non-zero pixels of a mask, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return as_box([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])


def interpolate(frames: np.ndarray, box_a: Box, box_b: Box, frame_a: int, frame_b: int) -> np.ndarray:
    """Linear interpolation of x, y, w, h, exactly as Label Studio and CVAT draw between two keyframes."""
    t = (np.asarray(frames, dtype=np.float64) - frame_a) / max(frame_b - frame_a, 1)
    return box_a[None, :] * (1 - t[:, None]) + box_b[None, :] * t[:, None]
