"""`scribblebox eval`: the whole system (box track, then masks with scribble rounds) against a simulated annotator.

Per sequence: (1) the box annotator of `boxes.py` draws the first true box and corrects the worst frame until every
frame's IoU >= 0.7, with Curve-VOT showing the track; (2) the mask engine runs on that track (round 0), then each
round the scribble robot strokes the worst frame (lowest J&F) and the engine re-runs with every stroke so far.
Clicks = boxes drawn + strokes. The J&F at the last round with at most 4 scribbled frames is the headline number.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from scribblebox.models.masks import MaskResult, Scribble
from scribblebox.models.video import FrameFolder, Video

from .boxes import CurveVotMethod, Episode, TrackMethod, simulate
from .davis import MASK_THRESHOLD, list_sequences, load_sequence
from .metrics import jf
from .plot import plot_rounds
from .robot import scribbles_for

log = logging.getLogger(__name__)

ROUNDS = 8
FRAMES_BUDGET = 4  # the issue's target: J&F with at most this many scribbled frames per video


class MaskRunner(Protocol):
    def run(self, video: Video, boxes: np.ndarray, scribbles: list[Scribble],
            previous: MaskResult | None = None) -> MaskResult: ...


@dataclass
class Round:
    """The state after one engine run: round 0 is the box track alone, round r follows the r-th robot turn."""

    round: int
    j: float
    f: float
    jf: float
    frame: int | None  # the frame the robot scribbled before this run (None in round 0)
    strokes: int  # strokes drawn so far, all frames
    frames_scribbled: int  # distinct frames with strokes so far
    seconds: float  # wall time of this engine run
    added: list[dict] = field(default_factory=list)  # the strokes drawn before this run, to replay a session


@dataclass
class SequenceEval:
    name: str
    frames: int
    box_clicks: int
    box_iou: float  # mean IoU of the track the annotator accepted
    box_seconds: float
    rounds: list[Round] = field(default_factory=list)
    final_frame_jf: list[float] = field(default_factory=list)

    @property
    def clicks(self) -> int:
        return self.box_clicks + self.rounds[-1].strokes

    def at_budget(self, frames: int = FRAMES_BUDGET) -> Round:
        """The last round whose scribbles touch at most `frames` frames."""
        return [r for r in self.rounds if r.frames_scribbled <= frames][-1]

    def seconds_per_frame(self) -> float:
        """Mean over engine runs of its seconds per frame: what one re-propagation costs."""
        return float(np.mean([r.seconds for r in self.rounds])) / self.frames

    def to_dict(self) -> dict:
        best = self.at_budget()
        return {**asdict(self), "clicks": self.clicks, "jf_at_4_frames": best.jf, "clicks_at_4_frames":
                self.box_clicks + best.strokes, "seconds_per_frame": self.seconds_per_frame()}


class _Shown:
    """Records the last track a box method showed, so the mask stage starts from exactly what the annotator accepted."""

    def __init__(self, method: TrackMethod) -> None:
        self.method, self.name, self.last = method, method.name, None

    @property
    def frames_processed(self) -> int:
        return self.method.frames_processed

    def start(self, video: Video) -> None:
        self.method.start(video)

    def show(self, placed) -> np.ndarray:
        self.last = self.method.show(placed)
        return self.last

    def keyframe_count(self) -> int:
        return self.method.keyframe_count()


def box_stage(box_method: TrackMethod, video: Video, gt: np.ndarray) -> tuple[Episode, np.ndarray]:
    """The box annotator's episode and the track it accepted (what the mask stage starts from)."""
    shown = _Shown(box_method)
    episode = simulate(shown, video, gt)
    return episode, shown.last


def gt_masks(root: str | Path, name: str, num_frames: int) -> list[np.ndarray]:
    """Bool GT masks of the first `num_frames` frames, matched by file stem as `davis.gt_boxes` does."""
    folder = Path(root) / name
    out = []
    for path in FrameFolder(folder / "frames").paths[:num_frames]:
        mask = cv2.imread(str(folder / "masks" / (path.stem + ".png")), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{folder}/masks/{path.stem}.png: missing or unreadable mask")
        out.append(mask > MASK_THRESHOLD)
    return out


def score(masks: dict[int, np.ndarray], gts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F; a frame the engine left out counts as an empty mask."""
    pairs = [jf(masks.get(i, np.zeros_like(gt)), gt) for i, gt in enumerate(gts)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def mask_stage(engine: MaskRunner, video: Video, boxes: np.ndarray, gts: list[np.ndarray], rounds: int = ROUNDS,
               ) -> tuple[list[Round], np.ndarray]:
    """Round 0 from the boxes, then up to `rounds` robot turns; stops early when no frame has an error to stroke.

    Returns the rounds and the last run's per-frame J&F.
    """
    scribbles: list[Scribble] = []
    result: MaskResult | None = None
    out: list[Round] = []
    frame: int | None = None
    new: list[Scribble] = []
    frame_jf = np.zeros(len(gts))
    for r in range(rounds + 1):
        if r:
            frame, new = _robot_turn(result.masks, gts, frame_jf, boxes)
            if not new:
                log.info("round %d: no error region large enough to scribble; stopping", r)
                break
            scribbles += new
        t0 = time.perf_counter()
        result = engine.run(video, boxes, list(scribbles), previous=result)
        seconds = time.perf_counter() - t0
        j, f = score(result.masks, gts)
        frame_jf = (j + f) / 2
        out.append(Round(r, float(j.mean()), float(f.mean()), float(frame_jf.mean()), frame, len(scribbles),
                         len({s.frame for s in scribbles}), seconds, [_stroke(s) for s in new]))
    return out, frame_jf


def _stroke(s: Scribble) -> dict:
    return {"frame": s.frame, "positive": s.positive, "radius": s.radius,
            "points": [[round(float(x), 1), round(float(y), 1)] for x, y in s.points]}


def _robot_turn(masks: dict[int, np.ndarray], gts: list[np.ndarray], frame_jf: np.ndarray, boxes: np.ndarray,
                ) -> tuple[int | None, list[Scribble]]:
    """Strokes on the worst frame (lowest J&F, earliest on ties); the next worst if its errors are all too small.

    Frames without a box are passed over: there the annotator would fix the box, which the box stage already did.
    """
    for f in np.argsort(frame_jf, kind="stable"):
        if not (boxes[f, 2] > 0 and boxes[f, 3] > 0):  # False for NaN too
            continue
        new = scribbles_for(masks.get(int(f), np.zeros_like(gts[f])), gts[f], int(f))
        if new:
            return int(f), new
    return None, []


def evaluate_sequence(engine: MaskRunner, box_method: TrackMethod, root: str | Path, name: str,
                      max_frames: int = 0, rounds: int = ROUNDS) -> SequenceEval | None:
    """Both stages on one sequence; None when no frame has a ground-truth mask."""
    seq = load_sequence(root, name, max_frames)
    if np.all(np.isnan(seq.gt[:, 0])):
        log.warning("%s: every mask is empty; skipped", name)
        return None
    episode, boxes = box_stage(box_method, seq.video, seq.gt)
    gts = gt_masks(root, name, seq.video.num_frames)
    res = SequenceEval(name, seq.video.num_frames, episode.clicks, episode.iou_final, episode.track_seconds)
    res.rounds, final = mask_stage(engine, seq.video, boxes, gts, rounds)
    res.final_frame_jf = [round(float(v), 4) for v in final]
    return res


def run_eval(engine: MaskRunner, box_method: TrackMethod, root: str | Path, sequences: list[str] | None = None,
             max_frames: int = 0, rounds: int = ROUNDS,
             on_sequence: Callable[[list[SequenceEval]], None] | None = None) -> list[SequenceEval]:
    """Every sequence in turn, with one engine and one box method built by the caller (as the server builds them)."""
    if rounds < 0:
        raise ValueError(f"--rounds must be >= 0, got {rounds}")
    names = sequences or list_sequences(root)
    if not names:
        raise ValueError(f"{root}: no <seq>/frames + <seq>/masks sub-folders found")
    results: list[SequenceEval] = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        res = evaluate_sequence(engine, box_method, root, name, max_frames, rounds)
        if res is None:
            continue
        results.append(res)
        log.info("[%d/%d] %s: %d box clicks, J&F %s, %d frames scribbled | %.1f s", i, len(names), name,
                 res.box_clicks, " ".join(f"{r.jf:.3f}" for r in res.rounds), res.rounds[-1].frames_scribbled,
                 time.perf_counter() - t0)
        if on_sequence:
            on_sequence(results)
    return results


def curve(res: SequenceEval, rounds: int) -> list[float]:
    """J&F per round 0..rounds; a sequence that stopped early keeps its last value (nothing left to correct)."""
    values = [r.jf for r in res.rounds]
    return values + [values[-1]] * (rounds + 1 - len(values))


def overall(results: list[SequenceEval], rounds: int) -> dict:
    """Means over sequences: per-round J, F, J&F (carried forward after an early stop) and the effort numbers."""
    if not results:
        return {}

    def per_round(key: str) -> list[float]:
        return [float(np.mean([getattr(res.rounds[min(r, len(res.rounds) - 1)], key) for res in results]))
                for r in range(rounds + 1)]

    dicts = [res.to_dict() for res in results]
    mean = {key: float(np.mean([d[key] for d in dicts]))
            for key in ("jf_at_4_frames", "clicks_at_4_frames", "clicks", "box_clicks", "seconds_per_frame")}
    mean["frames_scribbled"] = float(np.mean([res.rounds[-1].frames_scribbled for res in results]))
    return {"sequences": len(results), "j": per_round("j"), "f": per_round("f"), "jf": per_round("jf"), **mean}


def format_table(results: list[SequenceEval], rounds: int) -> str:
    """One row per sequence: J&F after each round, J&F with <= 4 scribbled frames, final J/F, effort; then the mean."""
    name_w = max([len("overall")] + [len(r.name) for r in results])
    head = (f"{'sequence':<{name_w}} {'frames':>6} {'boxclk':>6} " + "".join(f"{'r' + str(r):>6}" for r in
            range(rounds + 1)) + f" {'JF@4f':>6} {'J':>6} {'F':>6} {'scrib':>6} {'clicks':>6} {'s/fr':>6}")
    lines = [head, "-" * len(head)]
    for res in results:
        last = res.rounds[-1]
        lines.append(f"{res.name:<{name_w}} {res.frames:>6} {res.box_clicks:>6} "
                     + "".join(f"{v:>6.3f}" for v in curve(res, rounds))
                     + f" {res.at_budget().jf:>6.3f} {last.j:>6.3f} {last.f:>6.3f} {last.frames_scribbled:>6}"
                     f" {res.clicks:>6} {res.seconds_per_frame():>6.2f}")
    lines.append("-" * len(head))
    if results:
        m = overall(results, rounds)
        lines.append(f"{'overall':<{name_w}} {sum(r.frames for r in results):>6} {m['box_clicks']:>6.1f} "
                     + "".join(f"{v:>6.3f}" for v in m["jf"])
                     + f" {m['jf_at_4_frames']:>6.3f} {m['j'][-1]:>6.3f} {m['f'][-1]:>6.3f}"
                     f" {m['frames_scribbled']:>6.1f} {m['clicks']:>6.1f} {m['seconds_per_frame']:>6.2f}")
    return "\n".join(lines)


def eval_command(settings, args) -> int:
    """`scribblebox eval ROOT`: table on stdout, JSON (rewritten after every sequence) at --output, PNG at --plot."""
    from scribblebox.models.mask_engine import MaskEngine

    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    output = Path(args.output) if args.output else None

    def save(results: list[SequenceEval]) -> None:
        if output:
            doc = {"root": str(args.root), "rounds": args.rounds, "max_frames": args.max_frames,
                   "settings": {"tracking": asdict(settings.tracking), "masks": asdict(settings.masks)},
                   "sequences": [r.to_dict() for r in results], "overall": overall(results, args.rounds)}
            output.write_text(json.dumps(doc, indent=1))

    engine = MaskEngine.from_settings(settings.masks)
    results = run_eval(engine, CurveVotMethod(settings), args.root, sequences, args.max_frames, args.rounds, save)
    if not results:
        raise ValueError(f"{args.root}: no sequence has a non-empty ground-truth mask")
    if args.plot:
        plot_rounds({r.name: curve(r, args.rounds) for r in results}, overall(results, args.rounds)["jf"], args.plot,
                    title=f"J&F per round, {len(results)} sequences of {Path(args.root).name}")
    sys.stdout.write(format_table(results, args.rounds) + "\n")
    return 0
