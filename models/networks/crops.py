"""Box crops as 3x3 affine matrices (frame pixel -> crop pixel, pixel centres on integers), shared by training and
inference so both see objects the same way: the box enlarged by `margin` of its size on each side, resized to a
size x size square (the seed resizes to 512x512 or 256x256, aspect ratio not kept). Outside the frame is black.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # the training path imports this module and must not need PyAV (models.masks -> models.video)
    from ..masks import Scribble

MARGIN = 0.2


def crop_matrix(box: np.ndarray, size: int, margin: float = MARGIN) -> np.ndarray:
    """(3, 3) matrix taking frame pixel coordinates to the crop's; box is x, y, w, h with w, h > 0."""
    x, y, w, h = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
        raise ValueError(f"a crop needs a finite box with positive size, got {[x, y, w, h]}")
    left, top = x - 0.5 - margin * w, y - 0.5 - margin * h  # continuous edges of the enlarged box
    sx, sy = size / (w * (1 + 2 * margin)), size / (h * (1 + 2 * margin))
    return np.array([[sx, 0, -left * sx - 0.5], [0, sy, -top * sy - 0.5], [0, 0, 1]])


def warp(image: np.ndarray, matrix: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """The crop (size x size) of a frame-sized image or mask under `matrix` (3x3, frame -> crop)."""
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix[:2], (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def paste(soft: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A crop's soft mask back in the frame (float32 (H, W), zero outside the crop); only the crop's footprint is
    resampled, so the cost does not grow with the frame."""
    height, width = shape[:2]
    size = soft.shape[0]
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    frame_pts = (np.linalg.inv(matrix) @ corners.T)[:2]
    x0, y0 = (int(np.clip(np.floor(v), 0, n)) for v, n in zip(frame_pts.min(1), (width, height)))
    x1, y1 = (int(np.clip(np.ceil(v) + 1, 0, n)) for v, n in zip(frame_pts.max(1), (width, height)))
    out = np.zeros((height, width), np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], dtype=np.float64)
    out[y0:y1, x0:x1] = cv2.warpAffine(np.asarray(soft, np.float32), (matrix @ shift)[:2], (x1 - x0, y1 - y0),
                                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def convert(soft: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A soft mask in the crop of matrix `source` resampled into the crop of `target` (same size; 0 where unseen)."""
    size = soft.shape[0]
    return cv2.warpAffine(np.asarray(soft, np.float32), (source @ np.linalg.inv(target))[:2], (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def grid_theta(source: np.ndarray, target: np.ndarray, size: int) -> np.ndarray:
    """torch `affine_grid` theta (2, 3) that resamples a tensor in the crop of `source` into the crop of `target`
    (align_corners=False), so a training step can move a predicted mask from one frame's crop to the next's."""
    norm = np.array([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]])
    theta = norm @ source @ np.linalg.inv(target) @ np.linalg.inv(norm)
    return theta[:2].astype(np.float32)


def box_map(box: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """float32 (size, size): 1 inside the box (x, y, w, h in frame pixels), 0 outside."""
    x, y, w, h = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    a = matrix @ np.array([[x - 0.5, x + w - 0.5], [y - 0.5, y + h - 0.5], [1, 1]])
    x0, x1 = (int(np.clip(round(v + 0.5), 0, size)) for v in sorted(a[0]))
    y0, y1 = (int(np.clip(round(v + 0.5), 0, size)) for v in sorted(a[1]))
    out = np.zeros((size, size), np.float32)
    out[y0:y1, x0:x1] = 1
    return out


def stroke_maps(scribbles: Sequence[Scribble], matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative stroke maps (float32 (size, size), 0/1) of frame strokes in the crop; a later stroke
    wins where two overlap, as in the classical engine."""
    from ..segmentation import draw_stroke

    labels = np.zeros((size, size), np.int8)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    for s in scribbles:
        pts = np.asarray(s.points, dtype=np.float64).reshape(-1, 2)
        work = (matrix[:2, :2] @ pts.T).T + matrix[:2, 2]
        draw_stroke(labels, work, max(s.radius * scale, 0.5), 1 if s.positive else -1)
    return (labels > 0).astype(np.float32), (labels < 0).astype(np.float32)
