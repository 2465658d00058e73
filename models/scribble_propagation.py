"""Scribble propagation: a correction stroke on frame t is carried to t±1, t±2, ... by optical flow, so that one
stroke steers a run of frames (the seed's "scribbles are propagated to other frames").

Motion between two neighbouring frames is DIS optical flow computed in a shared crop (`FramePairs`: the union of
both frames' enlarged boxes, at working size), cached for one engine run because the mask propagator needs the
same flows. A carried point survives only while it stays in the object's box and its flow passes the
forward-backward check (occlusions and flow failures break it); strokes are split where points were dropped, so a
carried stroke never bridges a region it did not cross. Carried strokes are cues, not user input: they carry their
distance from the user's frame so consumers can weigh them.
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .masks import Scribble
from .segmentation import Window, valid_box, window_for
from .video import Video

FB_RELATIVE = 0.05  # forward-backward check: |F + B|^2 <= FB_RELATIVE * (|F|^2 + |B|^2) + FB_ABSOLUTE^2
FB_ABSOLUTE = 1.0  # working pixels


@dataclass(frozen=True)
class Carried:
    """A piece of a user stroke carried `distance` frames away from the frame it was drawn on."""

    scribble: Scribble
    distance: int


def locked_frames(video: Video, start: int, stop: int, lock: threading.Lock) -> Iterator[tuple[int, np.ndarray]]:
    """`video.frames(start, stop)` with each step under `lock`, so two threads can walk one video in turn."""
    it = video.frames(start, stop)
    while True:
        with lock:
            item = next(it, None)
        if item is None:
            return
        yield item


class FramePairs:
    """Crops and DIS flows of neighbouring frames in a shared window, cached (bounded) for one engine run.

    Thread-safe: two propagation sweeps share one instance. Frames are passed in by the caller when it has them
    (sequential iteration is what lazily decoded videos do well) and read under `lock` otherwise.
    """

    def __init__(self, video: Video, boxes: np.ndarray, work_size: int = 256, margin: float = 0.2,
                 preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST, max_flows: int = 48,
                 lock: threading.Lock | None = None) -> None:
        self.video = video
        self.boxes = np.asarray(boxes, dtype=np.float64)
        self.work_size = work_size
        self.margin = margin
        self.preset = preset
        self.max_flows = max_flows
        self.lock = lock or threading.Lock()
        self._flows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._guard = threading.Lock()
        self._local = threading.local()

    def window(self, a: int, b: int) -> Window:
        """The shared crop of frames a and b (order does not matter)."""
        lo, hi = min(a, b), max(a, b)
        return window_for([self.boxes[lo], self.boxes[hi]], self.video.width, self.video.height,
                          self.work_size, self.margin)

    def own_window(self, frame: int) -> Window:
        return window_for([self.boxes[frame]], self.video.width, self.video.height, self.work_size, self.margin)

    def frame(self, index: int) -> np.ndarray:
        with self.lock:
            return self.video.frame(index)

    def flow(self, a: int, b: int, image_a: np.ndarray | None = None, image_b: np.ndarray | None = None,
             ) -> tuple[Window, np.ndarray]:
        """(shared window, flow a->b): for each working pixel of a, its displacement to frame b (working pixels)."""
        window = self.window(a, b)
        with self._guard:
            cached = self._flows.get((a, b))
            if cached is not None:
                self._flows.move_to_end((a, b))
                return window, cached
        ga = self.gray(window, image_a if image_a is not None else self.frame(a))
        gb = self.gray(window, image_b if image_b is not None else self.frame(b))
        flow = self._dis().calc(ga, gb, None)
        with self._guard:
            self._flows[(a, b)] = flow
            while len(self._flows) > self.max_flows:
                self._flows.popitem(last=False)
        return window, flow

    @staticmethod
    def gray(window: Window, image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(window.crop(image), cv2.COLOR_BGR2GRAY)

    def _dis(self) -> cv2.DISOpticalFlow:
        """One DIS instance per thread (OpenCV algorithms keep per-call state)."""
        dis = getattr(self._local, "dis", None)
        if dis is None:
            dis = self._local.dis = cv2.DISOpticalFlow_create(self.preset)
        return dis


def sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples (k, C) of an (H, W, C) field at working points (k, 2); zero outside."""
    if len(points) == 0:
        return np.zeros((0, field.shape[2]), np.float32)
    px = np.ascontiguousarray(points[:, 0], dtype=np.float32).reshape(1, -1)
    py = np.ascontiguousarray(points[:, 1], dtype=np.float32).reshape(1, -1)
    return cv2.remap(field, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT).reshape(len(points), -1)


def resample(points: np.ndarray, step: float) -> np.ndarray:
    """Points every `step` pixels along a polyline (its vertices kept), so a stroke can be cut where points drop."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = [pts[:1]]
    for a, b in itertools.pairwise(pts):
        n = int(np.ceil(np.hypot(*(b - a)) / step))
        if n:
            out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(out)


def split_runs(points: np.ndarray, ids: np.ndarray, max_gap: int = 2) -> list[np.ndarray]:
    """Consecutive pieces of a carried stroke: cut where more than `max_gap` - 1 samples in a row were dropped."""
    if len(points) == 0:
        return []
    cuts = np.flatnonzero(np.diff(ids) > max_gap) + 1
    return np.split(points, cuts)


class ScribbleCarrier:
    """Carries user strokes to neighbouring frames along the box track (see the module docstring)."""

    def __init__(self, window: int = 10, box_slack: float = 0.1, spacing: float = 2.0) -> None:
        if window < 0:
            raise ValueError(f"scribble_window must be >= 0 frames, got {window}")
        self.window = window
        self.box_slack = box_slack
        self.spacing = spacing

    def carry(self, pairs: FramePairs, scribbles: Sequence[Scribble]) -> dict[int, list[Carried]]:
        """frame -> carried stroke pieces. A stroke travels up to `window` frames each way, stops at a frame without
        a box, and stops after reaching a frame that has user strokes of its own (that frame still gets the cue)."""
        out: dict[int, list[Carried]] = defaultdict(list)
        if self.window == 0:
            return {}
        by_frame: dict[int, list[Scribble]] = defaultdict(list)
        for s in scribbles:
            by_frame[s.frame].append(s)
        stops = set(by_frame)
        n = pairs.video.num_frames
        for t, strokes in sorted(by_frame.items()):
            if not valid_box(pairs.boxes[t]):
                continue
            for direction in (1, -1):
                stop = int(np.clip(t + direction * (self.window + 1), -1, n))
                for frame, pieces in self._walk(pairs, t, stop, strokes, stops):
                    out[frame].extend(pieces)
        return dict(out)

    def _walk(self, pairs: FramePairs, t: int, stop: int, strokes: list[Scribble], stops: set[int],
              ) -> Iterator[tuple[int, list[Carried]]]:
        tracks = [(s, resample(s.points, self.spacing)) for s in strokes]
        tracks = [(s, p, np.arange(len(p))) for s, p in tracks]
        previous: tuple[int, np.ndarray] | None = None
        for frame, image in locked_frames(pairs.video, t, stop, pairs.lock):
            if previous is None:
                previous = (frame, image)
                continue
            if not valid_box(pairs.boxes[frame]):
                return
            src, src_image = previous
            moved = []
            for s, pts, ids in tracks:
                keep_pts, keep_ids = self._step(pairs, src, frame, src_image, image, pts, ids)
                if len(keep_pts):
                    moved.append((s, keep_pts, keep_ids))
            tracks = moved
            if not tracks:
                return
            distance = abs(frame - t)
            yield frame, [Carried(Scribble(frame, piece, s.positive, s.radius), distance)
                          for s, pts, ids in tracks for piece in split_runs(pts, ids)]
            if frame in stops:
                return
            previous = (frame, image)

    def _step(self, pairs: FramePairs, a: int, b: int, image_a: np.ndarray, image_b: np.ndarray,
              points: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points of frame a moved to frame b; those failing the checks are dropped (with their ids)."""
        window, forward = pairs.flow(a, b, image_a, image_b)
        _, backward = pairs.flow(b, a, image_b, image_a)
        p = window.to_work(points)
        f = sample(forward, p)
        q = p + f
        back = sample(backward, q)
        err = np.sum((f + back) ** 2, axis=1)
        ok = err <= FB_RELATIVE * (np.sum(f ** 2, axis=1) + np.sum(back ** 2, axis=1)) + FB_ABSOLUTE ** 2
        ok &= (q[:, 0] >= 0) & (q[:, 1] >= 0) & (q[:, 0] <= window.w - 1) & (q[:, 1] <= window.h - 1)
        moved = window.to_frame(q)
        x, y, w, h = pairs.boxes[b]
        sx, sy = self.box_slack * w, self.box_slack * h
        ok &= (moved[:, 0] >= x - sx) & (moved[:, 0] <= x + w + sx) & (moved[:, 1] >= y - sy) & (moved[:, 1] <= y + h + sy)
        return moved[ok], ids[ok]
