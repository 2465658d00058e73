"""Curve-VOT: a dense track between user anchors, summarised by the fewest keyframes.

(Stub: the engine is being written; the interface below is final.)
"""
from __future__ import annotations

from collections.abc import Sequence

from .track import Keyframe, TrackResult
from .video import Video


class CurveVOT:
    def __init__(self, tracker: str = "csrt", tolerance: float = 0.9, work_size: int = 480, lost_frames: int = 5,
                 nano_backbone: str | None = None, nano_head: str | None = None) -> None:
        self.tracker = tracker
        self.tolerance = tolerance

    @classmethod
    def from_settings(cls, tracking) -> "CurveVOT":
        return cls(tracker=tracking.tracker, tolerance=tracking.tolerance, work_size=tracking.work_size,
                   lost_frames=tracking.lost_frames, nano_backbone=tracking.nano_backbone, nano_head=tracking.nano_head)

    def track(self, video: Video, anchors: Sequence[Keyframe], previous: TrackResult | None = None) -> TrackResult:
        """Track through the whole video from the anchors (0-based frames, pixel boxes).

        Segments whose bounding anchors are unchanged since `previous` are reused, so a correction
        re-tracks only the two segments next to it. Raises ValueError for anchors outside the video/frame.
        """
        raise NotImplementedError
