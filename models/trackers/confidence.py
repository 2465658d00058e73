"""An appearance check shared by all trackers: how much the tracked patch still looks like the object.

OpenCV's CSRT/KCF only say ok/lost; a normalised cross-correlation against templates gives a graded score that the
engine uses to weigh, blend and end tracks.
"""
from __future__ import annotations

import cv2
import numpy as np

PATCH = 16
# Against the first template alone the score decays over long tracks (the object turns, the tracker's box slides
# by a few pixels): a 1,000-frame track was ended at frame 641 with the object in plain view. A match to the last
# confident patch keeps it alive, discounted so that continuity never counts as much as looking like the first
# frame: review and blending still prefer frames that do (docs/benchmarks.md, "long tracks").
CONTINUITY = 0.5
REFRESH = 0.3  # score from which the current patch becomes the recent template


def _patch(frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    h, w = frame.shape[:2]
    x1, y1 = int(max(box[0], 0)), int(max(box[1], 0))
    x2, y2 = int(min(box[0] + box[2], w)), int(min(box[1] + box[3], h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    gray = frame[y1:y2, x1:x2]
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    p = cv2.resize(gray, (PATCH, PATCH), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    p -= p.mean()
    norm = float(np.linalg.norm(p))
    return p / norm if norm > 1e-3 else np.zeros_like(p)


def _ncc(patch: np.ndarray | None, template: np.ndarray | None) -> float:
    if patch is None or template is None:
        return 0.0
    if not patch.any() or not template.any():
        return 0.5  # flat patches: appearance says nothing either way
    return float(np.clip(np.dot(patch, template), 0.0, 1.0))


class AppearanceScore:
    """NCC against the first patch or, times CONTINUITY, against the last confident one; in [0, 1]."""

    def __init__(self, frame: np.ndarray, box: np.ndarray) -> None:
        self.template = _patch(frame, box)
        self.recent = self.template

    def __call__(self, frame: np.ndarray, box: np.ndarray) -> float:
        patch = _patch(frame, box)
        score = max(_ncc(patch, self.template), CONTINUITY * _ncc(patch, self.recent))
        if patch is not None and score >= REFRESH:
            self.recent = patch
        return score
