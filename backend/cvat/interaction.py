"""CVAT's interaction prompts (positive/negative clicks, an optional box) as the segmenter's inputs.

Shared by the nuclio interactor and the native InteractionFunction, so both answer the same mask. Clicks become
one-point scribbles; without a box, the object is looked for around the positive clicks.
"""
from __future__ import annotations

import numpy as np

from ...models.masks import Scribble
from ...models.segmentation import GrabCutSegmenter

CLICK_RADIUS = 3.0  # pixels: a click is a small disc of certain foreground/background
POINTS_PAD = 0.1  # no box: the positive clicks' bounding box, grown by this fraction of the image's short side


def prompt_box(positive: np.ndarray, box: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """The box to segment in: the user's, else one around the positive clicks (x, y, w, h pixels, clipped)."""
    if box is not None:
        return np.asarray(box, dtype=np.float64)
    if len(positive) == 0:
        raise ValueError("give at least one positive point or a box around the object")
    pad = POINTS_PAD * min(width, height)
    x0, y0 = np.maximum(positive.min(axis=0) - pad, 0)
    x1, y1 = np.minimum(positive.max(axis=0) + pad, (width, height))
    return np.array([x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0)])


def clicks(positive: np.ndarray, negative: np.ndarray) -> list[Scribble]:
    """Clicks as one-point scribbles on frame 0 (negative ones last, so they win where two overlap)."""
    points = [(p, True) for p in np.asarray(positive).reshape(-1, 2)]
    points += [(p, False) for p in np.asarray(negative).reshape(-1, 2)]
    return [Scribble(0, np.asarray(p, dtype=np.float64)[None], sign, CLICK_RADIUS) for p, sign in points]


def segment_prompts(segmenter: GrabCutSegmenter, image: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                    box: np.ndarray | None) -> np.ndarray:
    """Full-frame bool mask of the prompted object."""
    h, w = image.shape[:2]
    return segmenter.segment(image, prompt_box(positive, box, w, h), clicks(positive, negative))
