"""OpenCV's CSRT (default, accurate) and KCF (fast) trackers, from opencv-contrib; no weights needed."""
from __future__ import annotations

import cv2
import numpy as np

from .confidence import AppearanceScore


def _csrt() -> cv2.Tracker:
    params = cv2.TrackerCSRT_Params()
    # Smaller template, fewer scales, no colour segmentation: ~3x faster than OpenCV's defaults for ~0.02 lower
    # raw IoU on DAVIS (scripts/bench_csrt_params.py, docs/benchmarks.md); corrections absorb the difference.
    params.template_size = 128
    params.number_of_scales = 17
    params.use_segmentation = False
    return cv2.TrackerCSRT_create(params)


def _int_box(box: np.ndarray, frame: np.ndarray) -> tuple[int, int, int, int]:
    h, w = frame.shape[:2]
    x = int(round(min(max(box[0], 0), w - 2)))
    y = int(round(min(max(box[1], 0), h - 2)))
    bw = int(round(max(2, min(box[2], w - x))))
    bh = int(round(max(2, min(box[3], h - y))))
    return x, y, bw, bh


class OpenCVTracker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tracker: cv2.Tracker | None = None
        self._score: AppearanceScore | None = None

    def init(self, frame: np.ndarray, box: np.ndarray) -> None:
        self._tracker = _csrt() if self.name == "csrt" else cv2.TrackerKCF_create()
        self._tracker.init(frame, _int_box(box, frame))
        self._score = AppearanceScore(frame, box)

    def update(self, frame: np.ndarray) -> tuple[np.ndarray | None, float]:
        if self._tracker is None or self._score is None:
            raise RuntimeError("call init() before update()")
        ok, rect = self._tracker.update(frame)
        if not ok:
            return None, 0.0
        box = np.asarray(rect, dtype=np.float64)
        return box, self._score(frame, box)
