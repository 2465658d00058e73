"""NanoTrack v2 through OpenCV's TrackerNano: bring-your-own ONNX weights (backbone + neck/head)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .scored import ScoredTracker


def check_weights(backbone: str | None, head: str | None) -> tuple[str, str]:
    if not backbone or not head:
        raise ValueError("tracker 'nano' needs tracking.nano_backbone and tracking.nano_head (paths to NanoTrack ONNX files)")
    for path in (backbone, head):
        if not Path(path).is_file():
            raise ValueError(f"NanoTrack weights not found: {path}")
    return str(backbone), str(head)


class NanoTracker(ScoredTracker):
    def __init__(self, backbone: str, head: str) -> None:
        super().__init__()
        self.params = cv2.TrackerNano_Params()
        self.params.backbone = backbone
        self.params.neckhead = head

    def _create(self) -> cv2.Tracker:
        return cv2.TrackerNano_create(self.params)

    def _confidence(self, frame: np.ndarray, box: np.ndarray) -> float:
        """The network's own score when it gives one, capped by the appearance check."""
        appearance = super()._confidence(frame, box)
        network = float(self._tracker.getTrackingScore()) if self._tracker is not None else 0.0
        return min(network, appearance) if network > 0 else appearance
