"""Tracking between anchors: one-sided runs (before the first / after the last anchor) and two-sided runs.

Each function takes a tracker factory and a video, and returns a `SegmentResult` covering the frames strictly
between its anchors (or up to the video's end). Coordinates are full-frame pixels; the tracker itself sees
frames downscaled by `scale`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from .curve import fit_keyframes, smooth_outliers
from .geometry import clip_box, from_params, interpolate, iou, to_params
from .track import Keyframe
from .trackers import TrackerFactory
from .video import Video

LOW_SCORE = 0.1  # appearance score below which a frame counts towards "lost"
AGREE_LO, AGREE_HI = 0.35, 0.65  # forward/backward IoU below LO: interpolate; above HI: trust the trackers
# How far a tracker that starts on one anchor lands from the other anchor tells how much to trust it; short
# segments are already well served by interpolation. Ramps measured on DAVIS (docs/benchmarks.md).
REACH_LO, REACH_HI = 0.25, 0.5
LENGTH_LO, LENGTH_HI = 4, 12


@dataclass
class SegmentResult:
    start: int  # frame of boxes[0]
    boxes: np.ndarray  # (k, 4), NaN = absent
    scores: np.ndarray  # (k,)
    keyframes: list[Keyframe] = field(default_factory=list)
    method: str = "track"

    def to_dict(self) -> dict:
        return {
            "start": self.start,
            "boxes": [None if np.isnan(b[0]) else [round(float(v), 2) for v in b] for b in self.boxes],
            "scores": [round(float(s), 3) for s in self.scores],
            "keyframes": [[k.frame, [round(v, 3) for v in k.box], k.enabled] for k in self.keyframes],
            "method": self.method,
        }

    @staticmethod
    def from_dict(d: dict) -> "SegmentResult":
        boxes = np.array([[np.nan] * 4 if b is None else b for b in d["boxes"]], dtype=np.float64).reshape(-1, 4)
        return SegmentResult(
            start=int(d["start"]),
            boxes=boxes,
            scores=np.asarray(d["scores"], dtype=np.float64),
            keyframes=[Keyframe.of(f, b, e) for f, b, e in d["keyframes"]],
            method=d.get("method", "track"),
        )


@dataclass
class Context:
    video: Video
    factory: TrackerFactory
    scale: float
    tolerance: float
    lost_frames: int


def _run(ctx: Context, start: int, stop: int, box: np.ndarray, give_up: bool) -> tuple[np.ndarray, np.ndarray]:
    """Track from `box` on frame `start` over frames start±1 .. stop (exclusive). Returns (boxes, scores) for
    those frames; NaN/0 once the tracker reports loss. With `give_up`, stops decoding after a lost run."""
    count = abs(stop - start) - 1
    boxes = np.full((max(count, 0), 4), np.nan)
    scores = np.zeros(max(count, 0))
    if count <= 0:
        return boxes, scores
    frames: Iterator[tuple[int, np.ndarray]] = ctx.video.frames(start, stop)
    tracker = ctx.factory()
    h, w = ctx.video.height, ctx.video.width
    low_run = 0
    for i, (_, frame) in enumerate(frames):
        small = cv2.resize(frame, None, fx=ctx.scale, fy=ctx.scale, interpolation=cv2.INTER_AREA) if ctx.scale != 1 else frame
        if i == 0:
            tracker.init(small, box * ctx.scale)
            continue
        found, score = tracker.update(small)
        if found is not None:
            full = found / ctx.scale
            visible = clip_box(full, w, h)
            area = full[2] * full[3]
            if area <= 0 or visible[2] * visible[3] < 0.25 * area:
                score = 0.0
            boxes[i - 1] = full
            scores[i - 1] = score
        low_run = low_run + 1 if (found is None or score < LOW_SCORE) else 0
        if found is None or (give_up and low_run >= ctx.lost_frames):
            break
    return boxes, scores


def _lost_at(scores: np.ndarray, boxes: np.ndarray, run: int) -> int | None:
    """Index where a run of `run` low-confidence frames begins, or None if the tracker held on."""
    low = (scores < LOW_SCORE) | np.isnan(boxes[:, 0])
    count = 0
    for i, bad in enumerate(low):
        count = count + 1 if bad else 0
        if count >= run:
            return i - run + 1
    return None


def _fit(ctx: Context, boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    """Keyframe indices for a run whose ends are fixed (anchors or track ends)."""
    smooth = smooth_outliers(boxes, scores)
    return fit_keyframes(smooth, ctx.tolerance, trusted=scores >= LOW_SCORE)


def one_sided(ctx: Context, anchor: Keyframe, limit: int) -> SegmentResult:
    """Track from `anchor` towards `limit` (exclusive; -1 for the video's start) and end where the object is lost."""
    step = 1 if limit > anchor.frame else -1
    boxes, scores = _run(ctx, anchor.frame, limit, np.asarray(anchor.box), give_up=True)
    lost = _lost_at(scores, boxes, ctx.lost_frames)
    kept = len(boxes) if lost is None else lost
    boxes[kept:] = np.nan
    scores[kept:] = 0.0
    keyframes: list[Keyframe] = []
    if kept > 0:
        run = np.concatenate([np.asarray(anchor.box)[None], boxes[:kept]])
        run_scores = np.concatenate([[1.0], scores[:kept]])
        frames = anchor.frame + step * np.arange(kept + 1)
        for idx in _fit(ctx, run, run_scores)[1:]:
            ended = step == 1 and lost is not None and idx == kept
            keyframes.append(Keyframe.of(frames[idx], run[idx], enabled=not ended))
    elif step == 1 and lost is not None:
        keyframes.append(Keyframe.of(anchor.frame, anchor.box, enabled=False))
    if step == -1:
        boxes, scores = boxes[::-1], scores[::-1]
    start = anchor.frame + 1 if step == 1 else anchor.frame - len(boxes)
    return SegmentResult(start, boxes, scores, keyframes, "track" if lost is None else "lost")


def two_sided(ctx: Context, left: Keyframe, right: Keyframe) -> SegmentResult:
    """Frames strictly between two anchors: forward and backward tracks, drift-corrected towards the opposite
    anchor and blended by distance and confidence; where they disagree, fall back to interpolation; where both
    lost the object, leave a gap (the object is hidden there)."""
    a, b = left.frame, right.frame
    m = b - a - 1
    box_a, box_b = np.asarray(left.box), np.asarray(right.box)
    if m <= 0:
        return SegmentResult(a + 1, np.zeros((0, 4)), np.zeros(0), [], "empty")
    fwd, fwd_s = _run(ctx, a, b + 1, box_a, give_up=False)  # frames a+1 .. b
    bwd, bwd_s = _run(ctx, b, a - 1, box_b, give_up=False)  # frames b-1 .. a
    bwd, bwd_s = bwd[::-1], bwd_s[::-1]  # now frames a .. b-1
    gap = _gap(ctx, fwd[:-1], fwd_s[:-1], bwd[1:], bwd_s[1:])
    if gap is not None:
        return _with_gap(ctx, left, right, fwd[:-1], fwd_s[:-1], bwd[1:], bwd_s[1:], gap)
    frames = np.arange(a + 1, b)
    t = (frames - a) / (b - a)
    line = interpolate(frames, box_a, box_b, a, b)
    pf, pb = to_params(np.nan_to_num(fwd, nan=1.0)), to_params(np.nan_to_num(bwd, nan=1.0))
    drift_f = to_params(box_b) - pf[-1] if not np.isnan(fwd[-1, 0]) else np.zeros(4)
    drift_b = to_params(box_a) - pb[0] if not np.isnan(bwd[0, 0]) else np.zeros(4)
    corr_f = pf[:-1] + t[:, None] * drift_f
    corr_b = pb[1:] + (1 - t)[:, None] * drift_b
    wf = (1 - t) * (fwd_s[:-1] + 1e-3) * ~np.isnan(fwd[:-1, 0])
    wb = t * (bwd_s[1:] + 1e-3) * ~np.isnan(bwd[1:, 0])
    total = np.maximum(wf + wb, 1e-9)
    blend = from_params((wf[:, None] * corr_f + wb[:, None] * corr_b) / total[:, None])
    agree = iou(from_params(corr_f), from_params(corr_b))
    agree[(wf <= 0) | (wb <= 0)] = 0.0
    alpha = np.clip((_smooth(agree) - AGREE_LO) / (AGREE_HI - AGREE_LO), 0.0, 1.0) * _trust(fwd[-1], box_b, bwd[0], box_a, b - a)
    boxes = alpha[:, None] * blend + (1 - alpha[:, None]) * line
    scores = np.where(alpha > 0, np.maximum(fwd_s[:-1], bwd_s[1:]) * alpha, 0.5)
    run = np.concatenate([box_a[None], boxes, box_b[None]])
    run_scores = np.concatenate([[1.0], np.maximum(scores, LOW_SCORE), [1.0]])
    keys = _fit(ctx, run, run_scores)[1:-1]
    keyframes = [Keyframe.of(a + i, run[i]) for i in keys]
    method = "interp" if alpha.max() == 0 else ("blend" if alpha.min() > 0 else "mixed")
    return SegmentResult(a + 1, boxes, scores, keyframes, method)


def _trust(fwd_end: np.ndarray, box_b: np.ndarray, bwd_end: np.ndarray, box_a: np.ndarray, length: int) -> float:
    """Segment-level trust in tracking over interpolation, from how well each tracker reached the far anchor."""
    reach = min(float(iou(fwd_end, box_b)), float(iou(bwd_end, box_a)))
    by_reach = np.clip((reach - REACH_LO) / (REACH_HI - REACH_LO), 0.0, 1.0)
    by_length = np.clip((length - LENGTH_LO) / (LENGTH_HI - LENGTH_LO), 0.0, 1.0)
    return float(by_reach * by_length)


def _smooth(values: np.ndarray, window: int = 5) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.repeat(values[:1], window // 2), values, np.repeat(values[-1:], window // 2)])
    return np.convolve(padded, kernel, mode="valid")


def _gap(ctx: Context, fwd, fwd_s, bwd, bwd_s) -> tuple[int, int] | None:
    """(first, last) indices of the interior that neither direction saw, or None."""
    f_lost = _lost_at(fwd_s, fwd, ctx.lost_frames)
    b_lost_rev = _lost_at(bwd_s[::-1], bwd[::-1], ctx.lost_frames)
    if f_lost is None or b_lost_rev is None:
        return None
    b_lost = len(bwd) - 1 - b_lost_rev
    return (f_lost, b_lost) if f_lost <= b_lost else None


def _with_gap(ctx: Context, left: Keyframe, right: Keyframe, fwd, fwd_s, bwd, bwd_s, gap: tuple[int, int]) -> SegmentResult:
    first, last = gap
    a = left.frame
    boxes = np.full_like(fwd, np.nan)
    scores = np.zeros(len(fwd))
    boxes[:first], scores[:first] = fwd[:first], fwd_s[:first]
    boxes[last + 1 :], scores[last + 1 :] = bwd[last + 1 :], bwd_s[last + 1 :]
    keyframes: list[Keyframe] = []
    if first > 0:
        run = np.concatenate([np.asarray(left.box)[None], fwd[:first]])
        idx = _fit(ctx, run, np.concatenate([[1.0], fwd_s[:first]]))[1:]
        keyframes += [Keyframe.of(a + i, run[i], enabled=(i != first)) for i in idx]
    else:
        keyframes.append(Keyframe.of(a, left.box, enabled=False))
    if last + 1 < len(bwd):
        run = np.concatenate([bwd[last + 1 :], np.asarray(right.box)[None]])
        idx = _fit(ctx, run, np.concatenate([bwd_s[last + 1 :], [1.0]]))[:-1]
        keyframes += [Keyframe.of(a + 1 + last + 1 + i, run[i]) for i in idx]
    return SegmentResult(a + 1, boxes, scores, keyframes, "gap")
