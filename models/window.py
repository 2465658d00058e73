"""Views of a video that engines take for a video: a window of its frames, and a view that counts frames read.

A `FrameWindow` lets an engine work on frames [start, stop) of a long video (its frame 0 is the video's `start`)
without copying or decoding anything up front; closing the window stops every later read (the engine then fails
fast), which is how an interactive call abandons work that missed its deadline without closing the file under it.
A `CountingVideo` calls a hook for every frame it hands out: engines report progress through it without having
to know where their loops read frames.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from .video import Video, _VideoBase


class WindowClosed(RuntimeError):
    """A frame was read from a window after it was closed (its caller gave up on the work)."""


class _View(_VideoBase):
    """What a view shares with the video under it: size and rate; index checks and time lookup come from _VideoBase."""

    def __init__(self, video: Video, num_frames: int, timestamps: np.ndarray) -> None:
        self.video = video
        self.num_frames = int(num_frames)
        self.fps = video.fps
        self.width, self.height = video.width, video.height
        self.variable_frame_rate = bool(getattr(video, "variable_frame_rate", False))
        self.timestamps = np.asarray(timestamps, dtype=np.float64)


class FrameWindow(_View):
    """Frames [start, stop) of `video` as a video of stop - start frames. The window never closes `video`."""

    def __init__(self, video: Video, start: int, stop: int) -> None:
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= video.num_frames:
            raise ValueError(f"window [{start}, {stop}) is not inside the video's frames 0..{video.num_frames - 1}")
        stamps = np.asarray(getattr(video, "timestamps", np.arange(video.num_frames) / video.fps), dtype=np.float64)
        super().__init__(video, stop - start, stamps[start:stop] - stamps[start])
        self.start, self.stop = start, stop
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Refuse every later read; waits for a read in progress, so the video may be closed once this returns."""
        with self._lock:
            self._closed = True

    def frame(self, index: int) -> np.ndarray:
        i = self._check_index(index)
        with self._lock:
            self._refuse_if_closed()
            return self.video.frame(self.start + i)

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """The video's own `frames` (sequential decoding), shifted; each step checks that the window is open."""
        order = self._check_range(start, stop)
        if not order:
            return
        inner = self.video.frames(self.start + order.start, self.start + order.stop)
        while True:
            with self._lock:
                self._refuse_if_closed()
                item = next(inner, None)
            if item is None:
                return
            yield item[0] - self.start, item[1]

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise WindowClosed(f"frames {self.start}..{self.stop - 1}: the window was closed (its work was abandoned)")


class CountingVideo(_View):
    """`video` itself, calling `on_frame()` after each frame it hands out (frame() and frames() alike)."""

    def __init__(self, video: Video, on_frame: Callable[[], None]) -> None:
        stamps = getattr(video, "timestamps", np.arange(video.num_frames) / video.fps)
        super().__init__(video, video.num_frames, stamps)
        self.on_frame = on_frame

    def close(self) -> None:
        """Nothing to release: the video under the view belongs to its opener."""

    def frame(self, index: int) -> np.ndarray:
        image = self.video.frame(index)
        self.on_frame()
        return image

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for item in self.video.frames(start, stop):
            self.on_frame()
            yield item
