"""Curve-VOT: a dense track between user anchors, summarised by the fewest keyframes.

Anchors are the boxes the annotator placed. The video splits at anchors into segments (before the first,
between two, after the last); each is tracked on its own, so a correction only re-tracks the two segments
next to it, and results of unchanged segments are reused from the previous answer.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

import numpy as np

from .geometry import clip_box
from .progress import Meter, Progress
from .segments import Context, SegmentResult, one_sided, two_sided
from .track import Keyframe, TrackResult
from .trackers import tracker_factory
from .video import Video
from .window import CountingVideo

log = logging.getLogger(__name__)
MAX_REVIEW = 20


class CurveVOT:
    def __init__(self, tracker: str = "csrt", tolerance: float = 0.9, work_size: int = 480, lost_frames: int = 5,
                 nano_backbone: str | None = None, nano_head: str | None = None) -> None:
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self.tracker = tracker
        self.tolerance = tolerance
        self.work_size = work_size
        self.lost_frames = lost_frames
        self.factory = tracker_factory(tracker, nano_backbone, nano_head)

    @classmethod
    def from_settings(cls, tracking) -> "CurveVOT":
        return cls(tracker=tracking.tracker, tolerance=tracking.tolerance, work_size=tracking.work_size,
                   lost_frames=tracking.lost_frames, nano_backbone=tracking.nano_backbone, nano_head=tracking.nano_head)

    def track(self, video: Video, anchors: Sequence[Keyframe], previous: TrackResult | None = None,
              progress: Progress | None = None) -> TrackResult:
        """Track through the whole video from the anchors (0-based frames, pixel boxes).

        Segments whose bounding anchors are unchanged since `previous` are reused, so a correction
        re-tracks only the two segments next to it. Raises ValueError for anchors outside the video/frame.
        progress(fraction, message): called as frames are tracked (frames read / frames the new segments need).
        """
        n = video.num_frames
        anchors = validate_anchors(anchors, n, video.width, video.height)
        cache = previous.segments if previous is not None and previous.num_frames == n else {}
        plan = list(self._plan(anchors, n))
        todo = [reads for key, _, reads in plan if key not in cache]
        meter = Meter(progress, sum(todo), "tracking")
        counted = CountingVideo(video, meter.add) if progress is not None else video
        ctx = Context(counted, self.factory, self._scale(video), self.tolerance, self.lost_frames)
        segments: dict[str, dict] = {}
        done_reads = 0
        for key, run, reads in plan:
            done = cache.get(key)
            if done is None:
                done = run(ctx).to_dict()
                done_reads += reads
                meter.reach(done_reads, f"tracking: segment {len(segments) + 1}/{len(plan)} done")
            segments[key] = done
        meter.done(f"tracked {n} frames ({len(todo)} of {len(plan)} segments tracked, the rest reused)")
        return self._assemble(n, anchors, segments)

    def _scale(self, video: Video) -> float:
        return min(1.0, self.work_size / max(video.width, video.height))

    def _key(self, kind: str, *anchors: Keyframe) -> str:
        spec = [kind, self.tracker, self.tolerance, self.work_size, self.lost_frames]
        spec += [[k.frame, [round(v, 2) for v in k.box], k.enabled] for k in anchors]
        return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:16]

    def _plan(self, anchors: list[Keyframe], n: int):
        """(cache key, job, frames it reads at most) for every segment the anchors define."""
        first, last = anchors[0], anchors[-1]
        if first.frame > 0:
            yield self._key("head", first), lambda ctx: one_sided(ctx, first, -1), first.frame + 1
        for left, right in zip(anchors, anchors[1:]):
            if left.enabled:
                yield (self._key("between", left, right), lambda ctx, l=left, r=right: two_sided(ctx, l, r),
                       2 * (right.frame - left.frame + 1) if right.frame - left.frame > 1 else 0)
            elif right.frame - left.frame > 1:
                yield (self._key("reappear", left, right), lambda ctx, l=left, r=right: one_sided(ctx, r, l.frame),
                       right.frame - left.frame)
        if last.enabled and last.frame < n - 1:
            yield self._key("tail", last, Keyframe(n, (0, 0, 0, 0))), lambda ctx: one_sided(ctx, last, n), n - last.frame

    def _assemble(self, n: int, anchors: list[Keyframe], segments: dict[str, dict]) -> TrackResult:
        boxes = np.full((n, 4), np.nan)
        scores = np.zeros(n)
        by_frame = {k.frame: k for k in anchors}
        warnings: list[str] = []
        for seg in (SegmentResult.from_dict(s) for s in segments.values()):
            if len(seg.boxes):
                boxes[seg.start : seg.start + len(seg.boxes)] = seg.boxes
                scores[seg.start : seg.start + len(seg.boxes)] = seg.scores
            for kf in seg.keyframes:
                by_frame.setdefault(kf.frame, kf)
        for kf in anchors:
            boxes[kf.frame] = kf.box
            scores[kf.frame] = 1.0
        keyframes = [by_frame[f] for f in sorted(by_frame)]
        anchor_frames = {k.frame for k in anchors}
        risky = [f for f in np.argsort(scores) if not np.isnan(boxes[f, 0]) and scores[f] < 0.5 and f not in anchor_frames]
        review = [k.frame for k in keyframes if k.frame not in anchor_frames]
        review = sorted(set(review) | set(int(f) for f in risky[:MAX_REVIEW]), key=lambda f: scores[f])[:MAX_REVIEW]
        return TrackResult(n, boxes, scores, keyframes, list(anchors), review, segments, warnings)


def validate_anchors(anchors: Sequence[Keyframe], n: int, width: int, height: int) -> list[Keyframe]:
    """Sorted anchors, one per frame (the last given wins), boxes clipped to the frame; clear errors otherwise."""
    if not anchors:
        raise ValueError("at least one anchor box is needed to start a track")
    by_frame: dict[int, Keyframe] = {}
    for kf in anchors:
        if not 0 <= kf.frame < n:
            raise ValueError(f"anchor on frame {kf.frame} is outside the video (frames 0..{n - 1})")
        box = np.asarray(kf.box, dtype=np.float64)
        if not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"anchor on frame {kf.frame} has an empty or invalid box {list(kf.box)}")
        clipped = clip_box(box, width, height)
        if clipped[2] < 1 or clipped[3] < 1:
            raise ValueError(f"anchor box {list(kf.box)} on frame {kf.frame} lies outside the {width}x{height} frame")
        by_frame[kf.frame] = Keyframe.of(kf.frame, clipped, kf.enabled)
    return [by_frame[f] for f in sorted(by_frame)]
