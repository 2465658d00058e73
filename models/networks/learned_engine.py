"""The learned mask engine: `LearnedSegmenter` and `LearnedPropagator` implement the Segmenter and MaskPropagator
protocols of `models.masks` with the networks of a checkpoint (same inputs and outputs as the classical engine).

- Every frame is cropped by its box (enlarged by the checkpoint's margin, resized to its crop size), as in training.
- Propagation walks from every approved (and weak) frame forward and backward, one frame at a time: the start frame
  with its mask is the reference (encoded once per walk), the previous frame's result is the previous mask. Where
  two walks meet between two start frames, their soft masks are averaged, the nearer start frame weighing more.
  Both walks between two start frames run one after the other and each frame is pasted as soon as its last walk
  reaches it (`propagation.Fusion`): per frame, only the result's bool mask is kept (issue #6).
- Strokes travel by the scribble embedding: on a frame within `scribble_window` frames of a stroked one, locations
  whose nearest stroke embedding is close enough become positive/negative guide maps of the propagation decoder,
  unless the strokes also match cells far from them on their own frame (`false_match_rate`): then nothing is carried.
- Models load once per process per (file, device) (`load_model`); public methods run under torch.inference_mode().
"""
from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import mask_to_box
from ..mask_engine import expected_reads
from ..masks import MaskResult, Scribble
from ..progress import Meter, Progress
from ..fusion import Chain, Fusion, by_segment
from ..propagation import box_runs, check_boxes, plan_chains
from ..segmentation import enforce_strokes, satisfies, valid_box
from ..video import Video
from ..window import CountingVideo
from .checkpoint import load_checkpoint
from .crops import MARGIN, box_map, convert, crop_matrix, paste, stroke_maps, warp
from .model import ScribbleBoxModel
from .scribble_net import match_strokes, stroke_embeddings

log = logging.getLogger(__name__)

MATCH_THRESHOLD = 0.5  # squared embedding distance under which a location takes a stroke's label (the triplet margin)
MAX_FALSE_MATCH = 0.2  # a stroked frame whose strokes match more of its own far-away cells is not carried


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("masks on CUDA asked for, but torch sees no CUDA device: use device 'auto' or 'cpu'")
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def load_model(path: str | os.PathLike, device: str = "auto") -> tuple[ScribbleBoxModel, dict]:
    """(model, checkpoint payload), loaded once per process for each file version and device."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such mask checkpoint (set masks.checkpoint, or train one)")
    return _load(path, os.path.getmtime(path), str(pick_device(device)))


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float, device: str) -> tuple[ScribbleBoxModel, dict]:
    model, payload = load_checkpoint(path, map_location=device)
    log.info("loaded %s network (%s, stage %s) on %s", payload["config"]["name"], path, payload["stage"], device)
    return model.eval(), payload


@dataclass
class Crop:
    """A soft mask (float32 (S, S) in [0, 1]) in the crop of `matrix` (frame -> crop)."""

    matrix: np.ndarray
    soft: np.ndarray


class _Net:
    """What both engines share: the model, its crop geometry, numpy <-> tensor."""

    def __init__(self, model: ScribbleBoxModel, crop: int = 256, margin: float = MARGIN) -> None:
        if crop % 16:
            raise ValueError(f"crop must be a multiple of 16, got {crop}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.crop = crop
        self.margin = margin

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", **kwargs):
        """The engine over a checkpoint, at the crop size and margin it was trained with."""
        model, payload = load_model(path, device)
        train = payload.get("train_args") or {}
        return cls(model, crop=int(train.get("crop", 256)), margin=float(train.get("margin", MARGIN)), **kwargs)

    def matrix(self, box: np.ndarray) -> np.ndarray:
        return crop_matrix(box, self.crop, self.margin)

    def image(self, frame: np.ndarray, matrix: np.ndarray) -> torch.Tensor:
        crop = np.ascontiguousarray(warp(frame, matrix, self.crop))
        return torch.from_numpy(crop).to(self.device).permute(2, 0, 1)[None]

    def maps(self, *arrays: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(self.device)[None]

    def soft(self, logits: torch.Tensor) -> np.ndarray:
        up = F.interpolate(logits.sigmoid(), size=(self.crop, self.crop), mode="bilinear", align_corners=False)
        return up[0, 0].float().cpu().numpy()


class LearnedSegmenter(_Net):
    """Box + strokes (+ prior) -> mask with the interactive network; strokes are then enforced at full resolution."""

    @torch.inference_mode()
    def segment(self, frame: np.ndarray, box: np.ndarray, scribbles: Sequence[Scribble],
                prior: np.ndarray | None = None, soft: Sequence[Scribble] = ()) -> np.ndarray:
        """`soft`: strokes carried from other frames (cues, drawn like strokes but not enforced)."""
        box = np.asarray(box, dtype=np.float64).reshape(4)
        if not valid_box(box):
            raise ValueError(f"segmentation needs a finite box with positive size, got {box.tolist()}: "
                             "track or draw the object's box on this frame first")
        shape = frame.shape[:2]
        if prior is not None and prior.shape[:2] != shape:
            raise ValueError(f"prior mask is {prior.shape[:2]}, the frame is {shape}: pass a full-frame mask")
        crop = self.segment_crop(frame, box, [*soft, *scribbles], prior)
        return enforce_strokes(paste(crop.soft, crop.matrix, shape) > 0.5, scribbles)

    def segment_crop(self, frame: np.ndarray, box: np.ndarray, scribbles: Sequence[Scribble],
                     prior: np.ndarray | None = None) -> Crop:
        matrix = self.matrix(box)
        prior_crop = np.zeros((self.crop, self.crop), np.float32)
        if prior is not None and np.any(prior):
            prior_crop = (warp(np.asarray(prior, np.float32), matrix, self.crop) > 0.5).astype(np.float32)
        positive, negative = stroke_maps(scribbles, matrix, self.crop)
        maps = self.maps(box_map(box, matrix, self.crop), prior_crop, positive, negative)
        logits = self.model.interactive(self.image(frame, matrix), *maps.split(1, dim=1))
        return Crop(matrix, self.soft(logits))


class LearnedPropagator(_Net):
    """Masks through a box track from the approved frames with the propagation network (see the module docstring)."""

    def __init__(self, model: ScribbleBoxModel, crop: int = 256, margin: float = MARGIN, scribble_window: int = 10,
                 weak_weight: float = 0.5, match_threshold: float = MATCH_THRESHOLD) -> None:
        super().__init__(model, crop, margin)
        self.scribble_window = scribble_window
        self.weak_weight = weak_weight
        self.match_threshold = match_threshold
        self.segmenter = LearnedSegmenter(model, crop, margin)

    @torch.inference_mode()
    def propagate(self, video: Video, boxes: np.ndarray, approved: dict[int, np.ndarray],
                  scribbles: Sequence[Scribble], weak: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
        """Masks for every frame with a box (and every approved frame). `weak`: extra start frames trusted
        `weak_weight` as much as approved ones (e.g. segmented from their box alone)."""
        boxes = check_boxes(boxes, video.num_frames).copy()
        shape = (video.height, video.width)
        seeds = {int(f): np.asarray(m, dtype=bool) for f, m in (weak or {}).items()}
        seeds.update({int(f): np.asarray(m, dtype=bool) for f, m in approved.items()})
        for f, m in seeds.items():
            if m.shape != shape:
                raise ValueError(f"start mask of frame {f} is {m.shape}, the video is {shape}: pass full-frame masks")
        trust = {f: 1.0 if f in approved else self.weak_weight for f in seeds}
        for f, m in seeds.items():  # a start frame without a box gets its mask's box
            if not valid_box(boxes[f]) and (box := mask_to_box(m)) is not None:
                boxes[f] = box
        for start, stop in box_runs(boxes):
            if not any(start <= f < stop for f in seeds):
                mid = (start + stop - 1) // 2
                seeds[mid] = paste_mask(self.segmenter.segment_crop(video.frame(mid), boxes[mid], []), shape)
                trust[mid] = self.weak_weight
        starts = sorted(f for f in seeds if valid_box(boxes[f]))
        chains = plan_chains(boxes, starts)
        strokes = StrokeMemory(self, video, boxes, scribbles, seeds)
        fusion = Fusion(chains, trust, blend, lambda crop: paste_mask(crop, shape))
        for anchor, direction, last in by_segment(chains):
            for f, crop in self._walk(video, boxes, anchor, direction, last, seeds[anchor], strokes):
                fusion.add(f, direction, crop)
        masks = fusion.result()
        masks.update(seeds)
        return masks

    def _walk(self, video: Video, boxes: np.ndarray, anchor: int, direction: int, last: int, mask: np.ndarray,
              strokes: StrokeMemory) -> Iterator[tuple[int, Crop]]:
        """(frame, soft mask in its crop) along one chain, as they are computed."""
        matrix = self.matrix(boxes[anchor])
        state = Crop(matrix, warp(mask.astype(np.float32), matrix, self.crop))
        reference = self.model.propagation.reference(self.image(video.frame(anchor), matrix), self.maps(state.soft))
        for f, image in video.frames(anchor + direction, last + direction):
            matrix = self.matrix(boxes[f])
            previous = self.maps(convert(state.soft, state.matrix, matrix))
            features = self.model.encoder(self.image(image, matrix), previous)
            logits = self.model.propagation.decode(reference, features, strokes.guide(f, features))
            state = Crop(matrix, self.soft(logits))
            yield f, state


class StrokeMemory:
    """The user's strokes as embeddings of the stride-8 cells they cover, per stroked frame (computed once)."""

    def __init__(self, net: LearnedPropagator, video: Video, boxes: np.ndarray, scribbles: Sequence[Scribble],
                 masks: dict[int, np.ndarray]) -> None:
        self.net = net
        self.frames: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        by_frame: dict[int, list[Scribble]] = {}
        for s in scribbles:
            by_frame.setdefault(int(s.frame), []).append(s)
        for f, strokes in sorted(by_frame.items()):
            if not (0 <= f < video.num_frames and valid_box(boxes[f])):
                continue
            matrix = net.matrix(boxes[f])
            channel = (warp(masks[f].astype(np.float32), matrix, net.crop) if f in masks
                       else box_map(boxes[f], matrix, net.crop))
            embedding = net.model.scribble(net.image(video.frame(f), matrix), net.maps(channel))[0]
            positive, negative = (torch.from_numpy(m).to(net.device) for m in stroke_maps(strokes, matrix, net.crop))
            kept = (stroke_embeddings(embedding, positive), stroke_embeddings(embedding, negative))
            false_rate = false_match_rate(embedding, positive + negative, *kept, net.match_threshold)
            if false_rate > MAX_FALSE_MATCH:
                log.info("frame %d: its strokes match %.0f%% of the cells far from them on their own frame; "
                         "not carried (the embedding cannot localise them)", f, 100 * false_rate)
                continue
            self.frames[f] = kept

    def guide(self, frame: int, features) -> torch.Tensor | None:
        """(1, 2, S, S) propagated positive/negative strokes for `frame`, or None when no stroked frame is near."""
        near = [v for f, v in self.frames.items() if 0 < abs(frame - f) <= self.net.scribble_window]
        if not near:
            return None
        embedding = self.net.model.scribble.embed(features)[0]
        cells = match_strokes(embedding, torch.cat([p for p, _ in near]), torch.cat([n for _, n in near]),
                              self.net.match_threshold)
        return F.interpolate(cells[None], size=(self.net.crop, self.net.crop), mode="nearest")


def false_match_rate(embedding: torch.Tensor, strokes: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                     threshold: float, reach: int = 2) -> float:
    """On the stroked frame itself: the fraction of cells more than `reach` cells from every stroke that the strokes'
    embeddings still match. Training (batch-hard triplet) pushes such cells beyond the margin, so a high rate means
    matching would label the whole crop (measured on the shipped checkpoint: 100%, every frame near a correction
    then lost half its mask), and carrying is better skipped."""
    cells = F.adaptive_max_pool2d(strokes[None, None].float(), embedding.shape[-2:])[0]
    near = F.max_pool2d(cells, 2 * reach + 1, stride=1, padding=reach)[0] > 0
    if bool(near.all()):
        return 0.0
    matched = match_strokes(embedding, positive, negative, threshold).amax(0) > 0
    return float(matched[~near].float().mean())


def paste_mask(crop: Crop, shape: tuple[int, int]) -> np.ndarray:
    return paste(crop.soft, crop.matrix, shape) > 0.5


def blend(forward: Crop, backward: Crop, weight: float) -> Crop:
    """A frame both walks reached: their soft masks averaged in the forward crop, the forward one weighing `weight`
    (`weight` from `propagation.forward_weights`: the same rule as the classical engine)."""
    other = convert(backward.soft, backward.matrix, forward.matrix)
    return Crop(forward.matrix, weight * forward.soft + (1 - weight) * other)


class LearnedMaskEngine:
    """The mask stage's entry point (same contract as `models.mask_engine.MaskEngine.run`) over one checkpoint."""

    def __init__(self, segmenter: LearnedSegmenter, propagator: LearnedPropagator) -> None:
        self.segmenter = segmenter
        self.propagator = propagator

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", scribble_window: int = 10) -> "LearnedMaskEngine":
        propagator = LearnedPropagator.from_checkpoint(path, device, scribble_window=scribble_window)
        return cls(propagator.segmenter, propagator)

    def run(self, video: Video, boxes: np.ndarray, scribbles: Sequence[Scribble], previous: MaskResult | None = None,
            approved: dict[int, np.ndarray] | None = None, progress: Progress | None = None) -> MaskResult:
        """User-approved masks are kept; frames with strokes are segmented (the approved or previous mask as the
        prior) and become approved, except a frame approved last time whose mask already satisfies its strokes (kept,
        as the classical engine does: re-segmenting only drifts); everything is propagated from them.
        progress(fraction, message): called as frames are read."""
        start = time.perf_counter()
        boxes = check_boxes(boxes, video.num_frames)
        meter = Meter(progress, expected_reads(boxes, len({s.frame for s in scribbles}), 1 << 30), "masks")
        video = CountingVideo(video, meter.add) if progress is not None else video
        done = {int(f): np.asarray(m, dtype=bool) for f, m in (approved or {}).items()}
        by_frame: dict[int, list[Scribble]] = {}
        for s in scribbles:
            by_frame.setdefault(int(s.frame), []).append(s)
        for f, strokes in sorted(by_frame.items()):
            if not valid_box(boxes[f]):
                raise ValueError(f"frame {f} has scribbles but no box: add a keyframe there")
            prior = done.get(f)
            if prior is None and previous is not None:
                prior = previous.masks.get(f)
            if prior is not None and f not in (approved or {}) and previous is not None and f in previous.approved \
                    and satisfies(prior, strokes):
                done[f] = prior  # nothing new on this frame: re-segmenting would only drift (as the classical engine)
                continue
            done[f] = self.segmenter.segment(video.frame(f), boxes[f], strokes, prior)
        masks = self.propagator.propagate(video, boxes, done, scribbles)
        meter.done(f"masks for {len(masks)} frames")
        return MaskResult(masks=masks, approved=done, seconds=time.perf_counter() - start)
