"""Track domain objects: keyframes (what the annotator sees and edits) and the dense per-frame result."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import as_box, interpolate


@dataclass(frozen=True)
class Keyframe:
    """A box on a 0-based frame. ``enabled=False``: the object is absent after this frame until the next keyframe."""

    frame: int
    box: tuple[float, float, float, float]
    enabled: bool = True

    @staticmethod
    def of(frame: int, box, enabled: bool = True) -> "Keyframe":
        return Keyframe(int(frame), tuple(float(v) for v in np.asarray(box).reshape(4)), bool(enabled))

    def same_as(self, other: "Keyframe", tol_px: float = 1.0) -> bool:
        """True when `other` is this keyframe, up to rounding by the platform (percent units)."""
        return (
            self.frame == other.frame
            and self.enabled == other.enabled
            and bool(np.all(np.abs(np.subtract(self.box, other.box)) <= tol_px))
        )


def render_keyframes(keyframes: list[Keyframe], num_frames: int) -> np.ndarray:
    """Boxes per frame as a platform draws them: linear between keyframes, held after the last, NaN when absent."""
    out = np.full((num_frames, 4), np.nan)
    kfs = sorted(keyframes, key=lambda k: k.frame)
    for i, kf in enumerate(kfs):
        if kf.frame >= num_frames:
            break
        nxt = kfs[i + 1] if i + 1 < len(kfs) else None
        out[kf.frame] = kf.box
        if not kf.enabled:
            continue
        stop = min(nxt.frame, num_frames) if nxt else num_frames
        frames = np.arange(kf.frame + 1, stop)
        if len(frames) == 0:
            continue
        if nxt is None:
            out[frames] = kf.box
        else:
            out[frames] = interpolate(frames, as_box(kf.box), as_box(nxt.box), kf.frame, nxt.frame)
    return out


@dataclass
class TrackResult:
    """Dense track plus the keyframes that represent it.

    boxes: (N, 4) pixels, NaN where the object is absent or unknown; scores: (N,) confidence in [0, 1];
    keyframes: the fitted curve's control points, user anchors always included unchanged;
    review: frames worth a look, riskiest first; segments: per-segment cache so corrections re-track locally.
    """

    num_frames: int
    boxes: np.ndarray
    scores: np.ndarray
    keyframes: list[Keyframe]
    anchors: list[Keyframe]
    review: list[int] = field(default_factory=list)
    segments: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def kf(k: Keyframe) -> list:
            return [k.frame, [round(v, 3) for v in k.box], k.enabled]

        return {
            "num_frames": self.num_frames,
            "boxes": [None if np.isnan(b[0]) else [round(float(v), 2) for v in b] for b in self.boxes],
            "scores": [round(float(s), 3) for s in self.scores],
            "keyframes": [kf(k) for k in self.keyframes],
            "anchors": [kf(k) for k in self.anchors],
            "review": list(self.review),
            "segments": self.segments,
            "warnings": list(self.warnings),
        }

    @staticmethod
    def from_dict(d: dict) -> "TrackResult":
        def kf(v: list) -> Keyframe:
            return Keyframe.of(v[0], v[1], v[2])

        boxes = np.array([[np.nan] * 4 if b is None else b for b in d["boxes"]], dtype=np.float64).reshape(-1, 4)
        return TrackResult(
            num_frames=int(d["num_frames"]),
            boxes=boxes,
            scores=np.asarray(d["scores"], dtype=np.float64),
            keyframes=[kf(v) for v in d["keyframes"]],
            anchors=[kf(v) for v in d["anchors"]],
            review=list(d.get("review", [])),
            segments=dict(d.get("segments", {})),
            warnings=list(d.get("warnings", [])),
        )
