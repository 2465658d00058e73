"""Pure conversions between a Label Studio ``videorectangle`` result and engine keyframes.

Label Studio: 1-based frames at the labeling config's frame rate, x/y/width/height in percent of the frame.
Engine: 0-based video frames, boxes in pixels. `Timeline` holds the frame mapping between the two.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...models.track import Keyframe

REGION_TYPE = "videorectangle"


@dataclass(frozen=True)
class Timeline:
    """One video as Label Studio sees it: LS frame f (1..frames_count) shows video frame ``to_video[f - 1]``."""

    width: int
    height: int
    fps: float
    to_video: tuple[int, ...]

    @property
    def frames_count(self) -> int:
        return len(self.to_video)

    @staticmethod
    def identity(width: int, height: int, fps: float, frames_count: int) -> "Timeline":
        """LS frame f is video frame f - 1 (the config's frame rate is the video's, constant frame rate)."""
        return Timeline(width, height, fps, tuple(range(frames_count)))

    @staticmethod
    def build(width: int, height: int, fps: float, frames_count: int, num_video_frames: int,
              index_at_time: Callable[[float], int]) -> "Timeline":
        """LS frame f is the video frame shown at time (f - 1) / fps, as the LS player seeks it."""
        last = max(num_video_frames - 1, 0)
        frames = tuple(min(max(int(index_at_time((f - 1) / fps)), 0), last) for f in range(1, frames_count + 1))
        return Timeline(width, height, fps, frames)

    def video_frame(self, ls_frame: int) -> int:
        if not 1 <= ls_frame <= self.frames_count:
            raise ValueError(f"frame {ls_frame} is outside the video's Label Studio frames 1..{self.frames_count}")
        return self.to_video[ls_frame - 1]

    @cached_property
    def _table(self) -> np.ndarray:
        return np.asarray(self.to_video, dtype=np.int64)

    def ls_frame(self, video_frame: int) -> int:
        """First LS frame that shows `video_frame`, else the LS frame showing the nearest video frame."""
        table = self._table
        i = int(np.searchsorted(table, video_frame, side="left"))
        if i < len(table) and table[i] == video_frame:
            return i + 1
        candidates = [j for j in (i - 1, i) if 0 <= j < len(table)]
        return min(candidates, key=lambda j: abs(int(table[j]) - video_frame)) + 1


def _number(item: Mapping, key: str, where: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _box_px(item: Mapping, timeline: Timeline, where: str) -> tuple[float, float, float, float]:
    """Percent box -> pixel box, clipped to the frame; ValueError when it has a negative size or lies outside."""
    x, y, w, h = (_number(item, k, where) for k in ("x", "y", "width", "height"))
    if w < 0 or h < 0:
        raise ValueError(f"{where}: negative box size width={w}, height={h} (percent); redraw the box")
    if w == 0 or h == 0:
        raise ValueError(f"{where}: empty box (width={w}, height={h} percent); redraw the box around the object")
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, 100.0), min(y + h, 100.0)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{where}: box x={x}, y={y}, width={w}, height={h} (percent) lies outside the frame; redraw it inside")
    sx, sy = timeline.width / 100.0, timeline.height / 100.0
    return (x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy)


def fit_in_frame(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """Clip a pixel box to the frame, keeping at least 1 px inside it, so Label Studio can draw it and send it back."""
    x, y, w, h = (float(v) for v in box)
    x1, y1 = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    x2, y2 = min(max(x + w, x1 + 1.0), float(width)), min(max(y + h, y1 + 1.0), float(height))
    return (x1, y1, x2 - x1, y2 - y1)


def region_keyframes(region: Mapping, timeline: Timeline) -> list[Keyframe]:
    """The region's keyframes on video frames in pixels, sorted; a repeated frame keeps its last entry."""
    rid = region.get("id", "?")
    if region.get("type") != REGION_TYPE:
        raise ValueError(f"region {rid}: expected type {REGION_TYPE!r}, got {region.get('type')!r}")
    value = region.get("value")
    if not isinstance(value, Mapping) or not isinstance(value.get("sequence"), list):
        raise ValueError(f"region {rid}: value.sequence must be a list of keyframes")
    limit = value.get("framesCount", timeline.frames_count)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 1:
        raise ValueError(f"region {rid}: value.framesCount must be a positive number, got {limit!r}")
    by_frame: dict[int, Keyframe] = {}
    for n, item in enumerate(value["sequence"]):
        where = f"region {rid} keyframe {n}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        frame = item.get("frame")
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
            raise ValueError(f"{where}: 'frame' must be a 1-based integer, got {frame!r}")
        if frame > limit:
            raise ValueError(f"{where}: frame {frame} is beyond framesCount={limit}")
        video_frame = timeline.video_frame(frame)
        by_frame[video_frame] = Keyframe.of(video_frame, _box_px(item, timeline, where), bool(item.get("enabled", True)))
    return [by_frame[f] for f in sorted(by_frame)]


def keyframes_region(region: Mapping, keyframes: Sequence[Keyframe], timeline: Timeline,
                     ls_frames: Mapping[int, int] | None = None, score: float | None = None) -> dict:
    """A copy of `region` (same id, names, labels) whose sequence is `keyframes` in LS units.

    ls_frames: video frame -> LS frame for keyframes that came from LS, so anchors keep their exact LS frame
    when several LS frames show the same video frame. Two keyframes on one LS frame: the first one wins.
    """
    out = copy.deepcopy(dict(region))
    value = dict(out.get("value") or {})
    frames_count = int(value.get("framesCount") or timeline.frames_count)
    sx, sy = 100.0 / timeline.width, 100.0 / timeline.height
    sequence: dict[int, dict] = {}
    last: tuple[float, float, float, float] | None = None
    for kf in sorted(keyframes, key=lambda k: k.frame):
        f = (ls_frames or {}).get(kf.frame) or timeline.ls_frame(kf.frame)
        f = min(max(f, 1), frames_count)
        if all(math.isfinite(v) for v in kf.box):
            last = fit_in_frame(kf.box, timeline.width, timeline.height)
        if last is None:
            continue  # an absent box before any known one: nothing Label Studio could draw
        x, y, w, h = last
        sequence.setdefault(f, {"frame": f, "x": x * sx, "y": y * sy, "width": w * sx, "height": h * sy,
                                "rotation": 0, "enabled": kf.enabled, "time": (f - 1) / timeline.fps})
    value["framesCount"] = frames_count
    value.setdefault("duration", frames_count / timeline.fps)
    value["sequence"] = [sequence[f] for f in sorted(sequence)]
    out["value"] = value
    out["type"] = REGION_TYPE
    if score is not None:
        out["score"] = score
    return out
