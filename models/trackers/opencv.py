"""OpenCV's CSRT (default, accurate) and KCF (fast) trackers, from opencv-contrib; no weights needed."""
from __future__ import annotations

import cv2

from .scored import ScoredTracker


def csrt_params() -> cv2.TrackerCSRT_Params:
    params = cv2.TrackerCSRT_Params()
    # Smaller template, fewer scales, no colour segmentation: ~3x faster than OpenCV's defaults for ~0.02 lower
    # raw IoU on DAVIS (scripts/bench_csrt_params.py, docs/benchmarks.md); corrections absorb the difference.
    params.template_size = 128
    params.number_of_scales = 17
    params.use_segmentation = False
    return params


class OpenCVTracker(ScoredTracker):
    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in ("csrt", "kcf"):
            raise ValueError(f"OpenCVTracker: expected 'csrt' or 'kcf', got {name!r}")
        self.name = name

    def _create(self) -> cv2.Tracker:
        return cv2.TrackerCSRT_create(csrt_params()) if self.name == "csrt" else cv2.TrackerKCF_create()
