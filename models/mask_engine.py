"""The mask stage's one entry point: box track + all strokes so far (+ the last result) -> a mask on every frame.

`run` segments every frame that has strokes (strokes carried from neighbouring frames as soft cues, the previous
mask as prior), treats those frames as approved, and propagates from them through the box track. Without any
stroke, frames spread along each run of the track are segmented from their box alone and propagated from.
The engine keeps no state between calls: everything it needs from the past is in `previous` (a MaskResult).
Several objects: one call per object, each with its own boxes and strokes.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from .masks import MaskResult, Scribble
from .progress import Meter, Progress
from .propagation import FlowPropagator, box_runs, check_boxes
from .scribble_propagation import ScribbleCarrier
from .segmentation import GrabCutSegmenter, satisfies, valid_box
from .video import Video
from .window import CountingVideo

log = logging.getLogger(__name__)

ENGINES = ("classical", "learned", "sam2")
FLOWS = {"medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
         "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST}  # masks.flow -> OpenCV's DIS optical flow preset
SHIPPED_CHECKPOINT = "weights/scribblebox-small.pt"  # in this package: trained here, see weights/MODEL_CARD.md


def checkpoint_path(masks) -> str | None:
    """masks.checkpoint, else the checkpoint shipped with the package (None if this install has none)."""
    if masks.checkpoint:
        return str(masks.checkpoint)
    shipped = Path(str(resources.files("scribblebox.models").joinpath(SHIPPED_CHECKPOINT)))
    return str(shipped) if shipped.is_file() else None


class MaskEngine:
    """Segmenter + scribble carrier + propagator, wired together (see the module docstring)."""

    def __init__(self, segmenter: GrabCutSegmenter, propagator: FlowPropagator, carrier: ScribbleCarrier,
                 box_anchor_every: int = 25, correction_reach: int = 5) -> None:
        if box_anchor_every < 1:
            raise ValueError(f"box_anchor_every must be >= 1 frame, got {box_anchor_every}")
        self.segmenter = segmenter
        self.propagator = propagator
        self.carrier = carrier
        self.box_anchor_every = box_anchor_every
        self.correction_reach = correction_reach

    @classmethod
    def from_settings(cls, masks) -> MaskEngine:
        """The engine named by `settings.masks` (a MaskSettings)."""
        if masks.engine == "learned":
            path = checkpoint_path(masks)
            if path is None:
                raise ValueError("masks.engine 'learned' needs masks.checkpoint (a file written by `scribblebox train`)")
            from .networks.learned_engine import LearnedMaskEngine  # torch is only imported for this engine

            return LearnedMaskEngine.from_checkpoint(path, masks.device, masks.scribble_window)
        if masks.engine == "sam2":
            from .sam2_engine import Sam2MaskEngine  # torch and sam2 are only imported for this engine

            return Sam2MaskEngine.from_settings(masks)
        if masks.engine not in ENGINES:
            raise ValueError(f"unknown mask engine {masks.engine!r}; known: {list(ENGINES)} (set masks.engine)")
        if masks.work_size < 32:
            raise ValueError(f"masks.work_size must be >= 32 pixels, got {masks.work_size}")
        if masks.flow not in FLOWS:
            raise ValueError(f"unknown masks.flow {masks.flow!r}; known: {list(FLOWS)}")
        return cls(GrabCutSegmenter(masks.work_size),
                   FlowPropagator(masks.work_size, scribble_window=masks.scribble_window, preset=FLOWS[masks.flow]),
                   ScribbleCarrier(masks.scribble_window))

    def run(self, video: Video, boxes: np.ndarray, scribbles: Sequence[Scribble],
            previous: MaskResult | None = None, approved: dict[int, np.ndarray] | None = None,
            progress: Progress | None = None) -> MaskResult:
        """Masks (full-frame bool) for every frame with a box.

        approved: masks the user corrected by hand (a brush edit in Label Studio, a mask in CVAT); they are kept as
        they are, unless the same frame also has strokes, which then refine the user's mask (it is their prior).
        The result's `approved` holds those frames plus every frame that has strokes.
        progress(fraction, message): called as frames are read (about twice per boxed frame: two sweeps).
        """
        t0 = time.perf_counter()
        boxes = check_boxes(boxes, video.num_frames)
        by_frame = self._check_scribbles(scribbles, boxes, video.num_frames)
        meter = Meter(progress, expected_reads(boxes, len(by_frame), self.box_anchor_every), "masks")
        video = CountingVideo(video, meter.add) if progress is not None else video
        pairs = self.propagator.pairs(video, boxes)
        carried = self.carrier.carry(pairs, scribbles)
        given = self._check_approved(approved or {}, video)
        approved = dict(given)
        for f, strokes in sorted(by_frame.items()):
            prior = given.get(f)
            if prior is None and previous is not None:
                prior = previous.masks.get(f)
            if prior is not None and prior.shape != (video.height, video.width):
                prior = None  # a result for another video size: start afresh
            if prior is not None and f not in given and previous is not None and f in previous.approved \
                    and satisfies(prior, strokes):
                approved[f] = prior  # nothing new on this frame: re-segmenting would only drift
                continue
            cues = [c.scribble for c in carried.get(f, [])]
            approved[f] = self.segmenter.segment(pairs.frame(f), boxes[f], strokes, prior, soft=cues)
        weak = self._box_seeds(pairs, boxes, approved)
        masks = self.propagator.propagate(video, boxes, approved, scribbles, carried=carried, pairs=pairs, weak=weak)
        seconds = time.perf_counter() - t0
        meter.done(f"masks for {len(masks)} frames")
        log.debug("masks for %d frames (%d approved) in %.2f s", len(masks), len(approved), seconds)
        return MaskResult(masks=masks, approved=approved, seconds=seconds)

    def _box_seeds(self, pairs, boxes: np.ndarray, approved: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Frames spread every ~`box_anchor_every` frames along each run, segmented from their box alone, so no frame
        is far from a start frame. Only those within `correction_reach` frames of an approved frame are left out (the
        correction must show there); farther ones stay, trusted less in the fusion: one mediocre correction must not
        overwrite twenty frames the box alone got right."""
        seeds = {}
        for start, stop in box_runs(boxes):
            count = max(1, int(np.ceil((stop - start) / self.box_anchor_every)))
            for f in np.unique(np.linspace(start, stop - 1, count + 1 if count > 1 else 1).round().astype(int)):
                if all(abs(int(f) - a) > self.correction_reach for a in approved):
                    seeds[int(f)] = self.segmenter.segment(pairs.frame(int(f)), boxes[f], [])
        return seeds

    @staticmethod
    def _check_approved(approved: dict[int, np.ndarray], video: Video) -> dict[int, np.ndarray]:
        out = {}
        for f, mask in approved.items():
            if not 0 <= int(f) < video.num_frames:
                raise ValueError(f"an approved mask is on frame {f}, outside the video's frames 0..{video.num_frames - 1}")
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (video.height, video.width):
                raise ValueError(f"the approved mask on frame {f} is {mask.shape[1]}x{mask.shape[0]}, "
                                 f"the video is {video.width}x{video.height}")
            out[int(f)] = mask
        return out

    @staticmethod
    def _check_scribbles(scribbles: Sequence[Scribble], boxes: np.ndarray, n: int) -> dict[int, list[Scribble]]:
        by_frame: dict[int, list[Scribble]] = defaultdict(list)
        for s in scribbles:
            if not 0 <= s.frame < n:
                raise ValueError(f"a scribble is on frame {s.frame}, outside the video's frames 0..{n - 1}")
            if np.asarray(s.points).reshape(-1, 2).shape[0] == 0:
                raise ValueError(f"a scribble on frame {s.frame} has no points")
            if not valid_box(boxes[s.frame]):
                raise ValueError(f"frame {s.frame} has scribbles but no box: the object must have a box on every "
                                 "frame it is scribbled on (add a keyframe there)")
            by_frame[s.frame].append(s)
        return dict(by_frame)


def expected_reads(boxes: np.ndarray, stroke_frames: int, anchor_every: int) -> int:
    """About how many frames a run reads: stroke and seed frames once, every boxed frame in both sweeps."""
    boxed = int(np.count_nonzero(~np.isnan(boxes[:, 0])))
    return 2 * boxed + stroke_frames + boxed // max(anchor_every, 1) + 1
