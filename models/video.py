"""Videos as lazily decoded frame sequences (0-based indices, BGR uint8 HxWx3).

TO BE IMPLEMENTED (helper): VideoFile (PyAV), FrameFolder (a folder of JPEG/PNG frames), open_video().
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class Video(Protocol):
    num_frames: int
    fps: float
    width: int
    height: int
    variable_frame_rate: bool

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` (0-based), BGR uint8 (H, W, 3)."""

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Frames start, start±1, ... up to but excluding stop; backwards when stop < start."""
