"""Single-object trackers behind one small interface, built by name from the config.

A tracker works on whatever frames it is given (the engine hands it downscaled frames) and returns, per
frame, a box and a confidence in [0, 1]; `None` means it has lost the object.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class Tracker(Protocol):
    def init(self, frame: np.ndarray, box: np.ndarray) -> None:
        """Start on `frame` (BGR uint8) from `box` (x, y, w, h pixels)."""

    def update(self, frame: np.ndarray) -> tuple[np.ndarray | None, float]:
        """Box on the next frame (or None when lost) and a confidence in [0, 1]."""


TrackerFactory = Callable[[], Tracker]

NAMES = ("csrt", "kcf", "nano")


def tracker_factory(name: str, nano_backbone: str | None = None, nano_head: str | None = None) -> TrackerFactory:
    """A factory making fresh trackers of the named engine; checks weights once, up front."""
    if name in ("csrt", "kcf"):
        from .opencv import OpenCVTracker

        return lambda: OpenCVTracker(name)
    if name == "nano":
        from .nano import NanoTracker, check_weights

        backbone, head = check_weights(nano_backbone, nano_head)
        return lambda: NanoTracker(backbone, head)
    raise ValueError(f"unknown tracker {name!r}: choose one of {', '.join(NAMES)}")
