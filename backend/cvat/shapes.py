"""CVAT geometry <-> engine geometry: rectangles ``[x1, y1, x2, y2]`` (pixel edges) vs boxes ``[x, y, w, h]``,
flat point lists vs (k, 2) arrays, and a mask's outline as the polygon an interactor returns."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def rect_to_box(points: Sequence[float]) -> np.ndarray:
    """CVAT rectangle [x1, y1, x2, y2] -> box [x, y, w, h] (corners may come in any order)."""
    x1, y1, x2, y2 = (float(v) for v in points)
    return np.array([min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)])


def box_to_rect(box: Sequence[float]) -> list[float]:
    """Box [x, y, w, h] -> CVAT rectangle [x1, y1, x2, y2], rounded to 1/100 pixel as CVAT stores them."""
    x, y, w, h = (float(v) for v in box)
    return [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]


def flat_to_xy(points: Sequence[float]) -> np.ndarray:
    """CVAT's flat [x1, y1, x2, y2, ...] -> (k, 2)."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def mask_polygon(mask: np.ndarray) -> list[list[int]]:
    """Outline of the largest piece of a mask as [[x, y], ...] (empty for an empty mask): the interactor's
    ``points``, so CVAT's mask-to-polygon mode has an answer without re-tracing it in the browser."""
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    return largest.reshape(-1, 2).astype(int).tolist()
