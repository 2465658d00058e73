"""A CVAT task's frames as an engine `Video`: fetched one by one through the SDK on demand, in a bounded cache.

Frame i of the video is task frame ``first + i`` (CVAT's 0-based frame numbers), so an engine can work on a range
of a long task without touching the rest. Frames come at "original" quality, the pixels annotators draw on.
"""
from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from ...models.video import DEFAULT_FOLDER_FPS, _LRU, _readonly, _VideoBase

log = logging.getLogger(__name__)


class TaskVideo(_VideoBase):
    """`task`: a cvat_sdk Task proxy (get_meta, get_frame). `stop` is exclusive, default the task's end."""

    def __init__(self, task: Any, first: int = 0, stop: int | None = None, cache_size: int = 32,
                 meta: Any | None = None) -> None:
        meta = meta if meta is not None else task.get_meta()
        size = int(meta.size)
        stop = size if stop is None else int(stop)
        if not 0 <= first < stop <= size:
            raise ValueError(f"frame range {first}..{stop - 1} is outside task {task.id}'s frames 0..{size - 1}")
        sizes = {(int(f.width), int(f.height)) for f in meta.frames}
        if len(sizes) != 1:
            raise ValueError(f"task {task.id} has frames of {len(sizes)} different sizes: "
                             "whole-video tools need a video task (or images of one size)")
        self.width, self.height = sizes.pop()
        self.task, self.first = task, int(first)
        self.num_frames = stop - first
        self.fps = DEFAULT_FOLDER_FPS  # CVAT does not expose the frame rate; only frame numbers matter here
        self.timestamps = np.arange(self.num_frames) / self.fps
        self._cache = _LRU(cache_size)

    def frame(self, index: int) -> np.ndarray:
        i = self._check_index(index)
        image = self._cache.get(i)
        if image is None:
            number = self.first + i
            data = self.task.get_frame(number, quality="original").read()
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if decoded is None:
                raise RuntimeError(f"task {self.task.id} frame {number}: the server sent bytes that are not an image")
            if decoded.shape[:2] != (self.height, self.width):
                raise RuntimeError(f"task {self.task.id} frame {number} is {decoded.shape[1]}x{decoded.shape[0]}, "
                                   f"its metadata says {self.width}x{self.height}")
            image = _readonly(decoded)
            self._cache.put(i, image)
            log.debug("fetched task %s frame %d", self.task.id, number)
        return image
