"""Masks inside box tracks: the interfaces every mask engine implements (classical now, learned later).

Everything is numpy in pixels: frames BGR uint8 (H, W, 3); masks bool (H, W) at full frame resolution;
boxes (N, 4) float x, y, w, h per frame with NaN rows where the object is absent; 0-based frames.

(Interface file: the classical engine and its factory are being written; the signatures below are final.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .video import Video


@dataclass(frozen=True)
class Scribble:
    """A stroke (or a click: one point) on a frame. positive=True: "this is the object"; False: "this is not"."""

    frame: int
    points: np.ndarray  # (k, 2) float x, y pixels, a polyline
    positive: bool
    radius: float = 3.0  # stroke half-width in pixels


class Segmenter(Protocol):
    def segment(self, frame: np.ndarray, box: np.ndarray, scribbles: Sequence[Scribble],
                prior: np.ndarray | None = None) -> np.ndarray:
        """One frame: box + scribbles (+ the current mask as a prior) -> bool mask (H, W).
        Positive strokes end up inside the mask, negative ones outside."""


class MaskPropagator(Protocol):
    def propagate(self, video: Video, boxes: np.ndarray, approved: dict[int, np.ndarray],
                  scribbles: Sequence[Scribble]) -> dict[int, np.ndarray]:
        """Masks for every frame that has a box, carried forward and backward from the approved frames
        (fused between two approved frames); scribbles act as soft cues on the frames they were propagated to."""


@dataclass
class MaskResult:
    masks: dict[int, np.ndarray]  # frame -> bool (H, W); frames without a box are absent
    approved: dict[int, np.ndarray]  # the single-frame results on the frames the user touched
    seconds: float = 0.0
