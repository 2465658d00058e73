"""Common wrapper for OpenCV's tracker objects: init/update on numpy frames, plus the appearance score."""
from __future__ import annotations

import cv2
import numpy as np

from .confidence import AppearanceScore


def int_box(box: np.ndarray, frame: np.ndarray) -> tuple[int, int, int, int]:
    """Integer box inside the frame, at least 2x2: what OpenCV's trackers accept."""
    h, w = frame.shape[:2]
    x = int(round(min(max(box[0], 0), w - 2)))
    y = int(round(min(max(box[1], 0), h - 2)))
    bw = int(round(max(2, min(box[2], w - x))))
    bh = int(round(max(2, min(box[3], h - y))))
    return x, y, bw, bh


class ScoredTracker:
    """Subclasses say how to build the OpenCV tracker; confidence defaults to the appearance score."""

    def __init__(self) -> None:
        self._tracker: cv2.Tracker | None = None
        self._score: AppearanceScore | None = None

    def _create(self) -> cv2.Tracker:
        raise NotImplementedError

    def _confidence(self, frame: np.ndarray, box: np.ndarray) -> float:
        assert self._score is not None
        return self._score(frame, box)

    def init(self, frame: np.ndarray, box: np.ndarray) -> None:
        self._tracker = self._create()
        self._tracker.init(frame, int_box(np.asarray(box, dtype=np.float64), frame))
        self._score = AppearanceScore(frame, box)

    def update(self, frame: np.ndarray) -> tuple[np.ndarray | None, float]:
        if self._tracker is None:
            raise RuntimeError("call init() before update()")
        ok, rect = self._tracker.update(frame)
        if not ok:
            return None, 0.0
        box = np.asarray(rect, dtype=np.float64)
        return box, self._confidence(frame, box)
