"""The simulated annotator of the mask stage, after the DAVIS interactive challenge's scribble robot.

On the frame it corrects, it draws a positive stroke along the skeleton of the largest missed region (false
negatives) and a negative stroke along the skeleton of the largest wrongly included region (false positives).
A light opening first drops one-pixel slivers along the boundary, which a person would not scribble either.
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from scribblebox.models.masks import Scribble

MIN_AREA = 16  # error regions smaller than this many pixels (after the opening) are not worth a stroke
MAX_POINTS = 30  # a stroke is sent as at most this many polyline points
RADIUS = 3.0  # the stroke's half-width; narrower regions get a thinner stroke
_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def largest_region(error: np.ndarray, min_area: int = MIN_AREA) -> np.ndarray | None:
    """The largest 8-connected component of the error map after an opening scaled to its size; None if too small."""
    error = np.asarray(error, dtype=np.uint8)
    if np.count_nonzero(error) < min_area:
        return None
    size = int(np.clip(0.1 * np.sqrt(np.count_nonzero(error)), 3, 11)) | 1
    opened = cv2.morphologyEx(error, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < min_area:
        return None
    return labels == best


def longest_path(skeleton: np.ndarray) -> np.ndarray:
    """(k, 2) x, y pixels of the skeleton's longest chain (two breadth-first sweeps), so the stroke is one line."""
    ys, xs = np.nonzero(skeleton)
    if len(xs) == 0:
        return np.zeros((0, 2))
    pixels = set(zip(ys.tolist(), xs.tolist()))

    def sweep(start: tuple[int, int]) -> tuple[tuple[int, int], dict]:
        parent = {start: None}
        queue, last = deque([start]), start
        while queue:
            last = queue.popleft()
            for dy, dx in _NEIGHBOURS:
                nxt = (last[0] + dy, last[1] + dx)
                if nxt in pixels and nxt not in parent:
                    parent[nxt] = last
                    queue.append(nxt)
        return last, parent

    end_a, _ = sweep((int(ys[0]), int(xs[0])))
    end_b, parent = sweep(end_a)
    path, node = [], end_b
    while node is not None:
        path.append((node[1], node[0]))
        node = parent[node]
    return np.asarray(path, dtype=np.float64)


def region_scribble(region: np.ndarray, frame: int, positive: bool, max_points: int = MAX_POINTS,
                    radius: float = RADIUS) -> Scribble | None:
    """A stroke along the region's skeleton that stays inside it (ends trimmed where it is narrower than the stroke)."""
    region_u8 = region.astype(np.uint8)
    path = longest_path(cv2.ximgproc.thinning(region_u8 * 255) > 0)
    if len(path) == 0:
        return None
    depth = cv2.distanceTransform(region_u8, cv2.DIST_L2, 5)[path[:, 1].astype(int), path[:, 0].astype(int)]
    radius = float(np.clip(np.floor(np.median(depth)) - 1, 1, radius))
    inside = np.flatnonzero(depth >= radius + 0.5)
    if len(inside):
        path = path[inside[0] : inside[-1] + 1]
    if len(path) > max_points:
        path = path[np.round(np.linspace(0, len(path) - 1, max_points)).astype(int)]
    return Scribble(frame=frame, points=path, positive=positive, radius=radius)


def scribbles_for(mask: np.ndarray, gt: np.ndarray, frame: int, min_area: int = MIN_AREA) -> list[Scribble]:
    """The robot's strokes on one frame: positive on the largest miss, negative on the largest false region."""
    mask, gt = np.asarray(mask, dtype=bool), np.asarray(gt, dtype=bool)
    if mask.shape != gt.shape:
        raise ValueError(f"mask {mask.shape} and ground truth {gt.shape} must have the same size")
    out = []
    for error, positive in ((gt & ~mask, True), (mask & ~gt, False)):
        region = largest_region(error, min_area)
        stroke = region_scribble(region, frame, positive) if region is not None else None
        if stroke is not None:
            out.append(stroke)
    return out
