"""NanoTrack v2 through OpenCV's TrackerNano: bring-your-own ONNX weights (backbone + neck/head)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .confidence import AppearanceScore


def check_weights(backbone: str | None, head: str | None) -> tuple[str, str]:
    if not backbone or not head:
        raise ValueError("tracker 'nano' needs tracking.nano_backbone and tracking.nano_head (paths to NanoTrack ONNX files)")
    for path in (backbone, head):
        if not Path(path).is_file():
            raise ValueError(f"NanoTrack weights not found: {path}")
    return str(backbone), str(head)


class NanoTracker:
    def __init__(self, backbone: str, head: str) -> None:
        self.params = cv2.TrackerNano_Params()
        self.params.backbone = backbone
        self.params.neckhead = head
        self._tracker: cv2.Tracker | None = None
        self._score: AppearanceScore | None = None

    def init(self, frame: np.ndarray, box: np.ndarray) -> None:
        self._tracker = cv2.TrackerNano_create(self.params)
        x, y, w, h = (int(round(v)) for v in box)
        self._tracker.init(frame, (x, y, max(w, 2), max(h, 2)))
        self._score = AppearanceScore(frame, box)

    def update(self, frame: np.ndarray) -> tuple[np.ndarray | None, float]:
        if self._tracker is None or self._score is None:
            raise RuntimeError("call init() before update()")
        ok, rect = self._tracker.update(frame)
        if not ok:
            return None, 0.0
        box = np.asarray(rect, dtype=np.float64)
        network = float(self._tracker.getTrackingScore())
        return box, min(network, self._score(frame, box)) if network > 0 else self._score(frame, box)
