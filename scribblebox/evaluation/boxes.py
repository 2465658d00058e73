"""Box-track benchmark: how many boxes a simulated annotator draws before the track a platform shows is good enough.

The annotator is the same for every method: it draws the true box on the first visible frame, then keeps drawing
the true box on the worst shown frame (lowest IoU vs GT) until every frame reaches `IOU_OK`. What it "sees" is what
Label Studio / CVAT would draw: the method's keyframes, linearly interpolated. Clicks measure annotation effort;
IoU after the first click measures the automatic track alone.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.geometry import iou
from scribblebox.models.track import Keyframe, TrackResult, render_keyframes
from scribblebox.models.video import Video

from .davis import list_sequences, load_sequence

log = logging.getLogger(__name__)

IOU_OK = 0.7


class TrackMethod(Protocol):
    """What the platform shows for the boxes placed so far; counts its own work in `frames_processed`."""

    name: str
    frames_processed: int

    def start(self, video: Video) -> None:
        """Forget the previous video (one method instance runs many sequences)."""

    def show(self, placed: list[Keyframe]) -> np.ndarray:
        """(N, 4) boxes the annotator sees, NaN where nothing is drawn."""

    def keyframe_count(self) -> int:
        """Shapes the platform stores for the last shown track."""


@dataclass
class Episode:
    """One method on one sequence: the annotator's effort and what the method cost."""

    clicks: int
    placed_frames: list[int]
    iou_first: float
    iou_final: float
    min_iou_final: float
    keyframes: int
    frames_processed: int
    track_seconds: float
    first_track_seconds: float
    capped: bool = False

    @property
    def fps(self) -> float | None:
        return self.frames_processed / self.track_seconds if self.track_seconds > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": self.fps}


def frame_ious(shown: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU per frame; 0 where GT exists but nothing is shown, NaN where GT is absent (those frames don't count)."""
    return np.where(np.isnan(gt[:, 0]), np.nan, iou(shown, gt))


def worst_frame(shown: np.ndarray, gt: np.ndarray) -> tuple[int, float]:
    """The frame the annotator corrects next: lowest IoU among frames with GT.

    Ties (typically several disjoint boxes at IoU 0) go to the box farthest off (lowest generalised IoU; a frame
    showing nothing counts as -1, the farthest), as a person scrubbing the timeline would pick; then the earliest.
    """
    ious = frame_ious(shown, gt)
    visible = np.flatnonzero(~np.isnan(ious))
    if len(visible) == 0:
        raise ValueError("no frame has a ground-truth box; nothing to annotate")
    order = np.lexsort((_giou(shown[visible], gt[visible]), ious[visible]))  # stable: earliest among equals
    f = int(visible[order[0]])
    return f, float(ious[f])


def _giou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Generalised IoU (IoU minus the empty share of the enclosing box), -1 where `a` is absent."""
    inter_w = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter_w * inter_h
    hull = ((np.maximum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.minimum(a[:, 0], b[:, 0]))
            * (np.maximum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.minimum(a[:, 1], b[:, 1])))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = iou(a, b) - (hull - union) / hull
    return np.where(np.isnan(out), -1.0, out)


def simulate(method: TrackMethod, video: Video, gt: np.ndarray, threshold: float = IOU_OK,
             max_clicks: int | None = None) -> Episode:
    """Run the annotator loop; `max_clicks` defaults to the number of frames with GT (every frame drawn by hand)."""
    visible = np.flatnonzero(~np.isnan(gt[:, 0]))
    if len(visible) == 0:
        raise ValueError("no frame has a ground-truth box; nothing to annotate")
    cap = max_clicks or len(visible)
    placed = [Keyframe.of(visible[0], gt[visible[0]])]
    method.start(video)
    seconds = 0.0

    def show() -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        shown = method.show(placed)
        return shown, time.perf_counter() - t0

    shown, first_seconds = show()
    seconds += first_seconds
    iou_first = float(np.nanmean(frame_ious(shown, gt)))
    capped = False
    while True:
        f, worst = worst_frame(shown, gt)
        if worst >= threshold:
            break
        if len(placed) >= cap or any(k.frame == f for k in placed):
            capped = True  # out of clicks, or a drawn frame still looks wrong (the method ignores the annotator)
            log.warning("%s: stopped after %d clicks with frame %d at IoU %.2f", method.name, len(placed), f, worst)
            break
        placed.append(Keyframe.of(f, gt[f]))
        shown, dt = show()
        seconds += dt
    ious = frame_ious(shown, gt)
    return Episode(clicks=len(placed), placed_frames=[k.frame for k in placed], iou_first=iou_first,
                   iou_final=float(np.nanmean(ious)), min_iou_final=float(np.nanmin(ious)),
                   keyframes=method.keyframe_count(), frames_processed=method.frames_processed,
                   track_seconds=seconds, first_track_seconds=first_seconds, capped=capped)


class Interp:
    """Label Studio / CVAT without a backend: the annotator's boxes are the keyframes, interpolated linearly."""

    name = "interp"

    def start(self, video: Video) -> None:
        self.num_frames = video.num_frames
        self.frames_processed = 0
        self._keyframes = 0

    def show(self, placed: list[Keyframe]) -> np.ndarray:
        self.frames_processed += self.num_frames
        self._keyframes = len(placed)
        return render_keyframes(placed, self.num_frames)

    def keyframe_count(self) -> int:
        return self._keyframes


class CsrtLoop:
    """CVAT's tracker loop: OpenCV CSRT runs forward from each placed box to the next one; every frame gets a shape.

    Runs are cached by their starting keyframe, so a new box re-tracks only from itself to the next box (the run
    it cuts short is causal, so its prefix is unchanged), as in CVAT where earlier tracked shapes stay.
    """

    name = "csrt-loop"

    def start(self, video: Video) -> None:
        self.video = video
        self.frames_processed = 0
        self._runs: dict[int, tuple[tuple[float, ...], np.ndarray]] = {}
        self._shapes = 0

    def show(self, placed: list[Keyframe]) -> np.ndarray:
        out = np.full((self.video.num_frames, 4), np.nan)
        kfs = sorted(placed, key=lambda k: k.frame)
        for kf, nxt in zip(kfs, [*kfs[1:], None]):
            stop = nxt.frame if nxt else self.video.num_frames
            out[kf.frame:stop] = self._run(kf, stop)
        self._shapes = int(np.sum(~np.isnan(out[:, 0])))
        return out

    def keyframe_count(self) -> int:
        return self._shapes

    def _run(self, kf: Keyframe, stop: int) -> np.ndarray:
        cached = self._runs.get(kf.frame)
        if cached is not None and cached[0] == kf.box and len(cached[1]) >= stop - kf.frame:
            return cached[1][: stop - kf.frame]
        boxes = np.empty((stop - kf.frame, 4))
        boxes[0] = kf.box
        tracker = cv2.TrackerCSRT_create()
        tracker.init(self.video.frame(kf.frame), tuple(int(round(v)) for v in kf.box))
        self.frames_processed += 1
        for i, image in self.video.frames(kf.frame + 1, stop):
            ok, rect = tracker.update(image)
            boxes[i - kf.frame] = rect if ok else boxes[i - kf.frame - 1]  # CVAT keeps the last shape on failure
            self.frames_processed += 1
        self._runs[kf.frame] = (kf.box, boxes)
        return boxes


class CountingVideo:
    """A video that counts the frames read through it: the work an opaque engine did."""

    def __init__(self, video: Video) -> None:
        self._video = video
        self.num_frames, self.fps = video.num_frames, video.fps
        self.width, self.height = video.width, video.height
        self.variable_frame_rate = video.variable_frame_rate
        self.timestamps, self.duration = video.timestamps, video.duration
        self.index_at_time = video.index_at_time
        self.reads = 0

    def frame(self, index: int) -> np.ndarray:
        self.reads += 1
        return self._video.frame(index)

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for item in self._video.frames(start, stop):
            self.reads += 1
            yield item


class CurveVotMethod:
    """ScribbleBox: the engine re-tracks from the anchors (reusing `previous`); the platform shows its keyframes."""

    name = "curvevot"

    def __init__(self, settings) -> None:
        self.engine = CurveVOT.from_settings(settings.tracking)  # built once, like the server does

    def start(self, video: Video) -> None:
        self.video = CountingVideo(video)
        self.previous: TrackResult | None = None
        self.frames_processed = 0

    def show(self, placed: list[Keyframe]) -> np.ndarray:
        self.previous = self.engine.track(self.video, list(placed), self.previous)
        self.frames_processed = self.video.reads
        return render_keyframes(self.previous.keyframes, self.video.num_frames)

    def keyframe_count(self) -> int:
        return len(self.previous.keyframes) if self.previous else 0


METHODS: dict[str, Callable[..., TrackMethod]] = {
    "interp": lambda settings: Interp(),
    "csrt-loop": lambda settings: CsrtLoop(),
    "curvevot": CurveVotMethod,
}


@dataclass
class SequenceResult:
    """Every method's episode on one sequence (None: the method did not run, or no frame has GT)."""

    name: str
    frames: int
    visible: int
    episodes: dict[str, Episode | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "frames": self.frames, "visible": self.visible,
                "methods": {m: e.to_dict() if e else None for m, e in self.episodes.items()}}


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or text!r}; choose from {', '.join(METHODS)} (comma-separated)")
    return names


def run_benchmark(settings, root: str | Path, sequences: list[str] | None = None, methods: list[str] | None = None,
                  max_frames: int = 0, on_sequence: Callable[[list[SequenceResult]], None] | None = None,
                  ) -> list[SequenceResult]:
    """Every method on every sequence; a method whose engine is not implemented yet is skipped with an error log."""
    names = sequences or list_sequences(root)
    if not names:
        raise ValueError(f"{root}: no <seq>/frames + <seq>/masks sub-folders found")
    methods = methods or list(METHODS)
    built: dict[str, TrackMethod | None] = {m: METHODS[m](settings) for m in methods}
    results: list[SequenceResult] = []
    for i, name in enumerate(names, 1):
        seq = load_sequence(root, name, max_frames)
        res = SequenceResult(name, seq.video.num_frames, int(np.sum(~np.isnan(seq.gt[:, 0]))))
        t0 = time.perf_counter()
        for m in methods:
            res.episodes[m] = _episode(built, m, seq) if res.visible else None
        results.append(res)
        log.info("[%d/%d] %s (%d frames) %s | %.1f s", i, len(names), name, res.frames,
                 " | ".join(_summary(m, e) for m, e in res.episodes.items()), time.perf_counter() - t0)
        if on_sequence:
            on_sequence(results)
    return results


def _episode(built: dict[str, TrackMethod | None], m: str, seq) -> Episode | None:
    if built[m] is None:
        return None
    try:
        return simulate(built[m], seq.video, seq.gt)
    except NotImplementedError:
        log.error("%s: engine not implemented yet; skipping this method", m)
        built[m] = None
        return None


def _summary(m: str, e: Episode | None) -> str:
    return f"{m} n/a" if e is None else f"{m} {e.clicks} clicks IoU {e.iou_first:.2f}->{e.iou_final:.2f}"


COLUMNS = [("clk", "clicks", "{:.1f}"), ("iou1", "iou_first", "{:.2f}"), ("iouF", "iou_final", "{:.2f}"),
           ("kf", "keyframes", "{:.1f}"), ("fps", "fps", "{:.0f}"), ("t1", "first_track_seconds", "{:.2f}")]
WIDTH = 7


def overall(results: list[SequenceResult], methods: list[str]) -> dict[str, dict[str, float | None]]:
    """Mean over sequences of each metric, per method (sequences where the method did not run are left out)."""
    out = {}
    for m in methods:
        rows = [r.episodes[m].to_dict() for r in results if r.episodes.get(m)]
        out[m] = {key: _mean([row[key] for row in rows]) for _, key, _ in COLUMNS}
        out[m]["sequences"] = len(rows)
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def format_table(results: list[SequenceResult], methods: list[str]) -> str:
    """One row per sequence, one column group per method, then the overall (mean) row."""
    name_w = max([len("sequence"), len("overall")] + [len(r.name) for r in results])
    group_w = WIDTH * len(COLUMNS)

    def cells(values: dict | None) -> str:
        if values is None:
            return "n/a".rjust(group_w)
        return "".join(_cell(fmt, values.get(key)) for _, key, fmt in COLUMNS)

    lines = [" " * (name_w + 7) + "".join(f" | {m:<{group_w}}" for m in methods),
             f"{'sequence':<{name_w}} {'frames':>6}" + "".join(" | " + "".join(h.rjust(WIDTH) for h, _, _ in COLUMNS)
                                                              for _ in methods)]
    lines.append("-" * len(lines[1]))
    for r in results:
        row = [cells(r.episodes[m].to_dict() if r.episodes.get(m) else None) for m in methods]
        lines.append(f"{r.name:<{name_w}} {r.frames:>6}" + "".join(f" | {c}" for c in row))
    lines.append("-" * len(lines[1]))
    means = overall(results, methods)
    frames = sum(r.frames for r in results)
    lines.append(f"{'overall':<{name_w}} {frames:>6}" + "".join(f" | {cells(means[m])}" for m in methods))
    return "\n".join(line.rstrip() for line in lines)


def _cell(fmt: str, value) -> str:
    if value is None:
        return "-".rjust(WIDTH)
    text = fmt.format(value)
    return (text if len(text) < WIDTH else f"{value:.0e}").rjust(WIDTH)


def bench_command(settings, args) -> int:
    """`scribblebox bench-track ROOT`: table on stdout, JSON (rewritten after every sequence) at --output."""
    methods = parse_methods(args.methods)
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    output = Path(args.output) if args.output else None

    def save(results: list[SequenceResult]) -> None:
        if output:
            doc = {"root": str(args.root), "methods": methods, "iou_ok": IOU_OK, "max_frames": args.max_frames,
                   "sequences": [r.to_dict() for r in results], "overall": overall(results, methods)}
            output.write_text(json.dumps(doc, indent=1))

    results = run_benchmark(settings, args.root, sequences, methods, args.max_frames, on_sequence=save)
    sys.stdout.write(format_table(results, methods) + "\n")
    return 0
