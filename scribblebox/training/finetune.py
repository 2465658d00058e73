"""Fine-tuning on one project's approved masks (`fit`): a stable train / held-back split, a short run from the served
checkpoint, and old vs new measured on the held-back frames, so a worse model is never served.

- Samples are approved frames: the frame (BGR uint8, as `Video.frame` gives it), the object's box (x, y, w, h
  pixels), its mask, a group (one object in one video: pairs never mix objects) and the frame's index in the video.
- Split (stable as the project grows, so no fine-tuned version ever trains on a frame that later measures it): a
  frame is held back when sha1("<group>\\0<index>") read as a number in [0, 1) is below `holdout`; when that holds
  back none, the frame with the smallest hash is held back; when it holds back all, only that one is.
- Training reuses the stage generators: `interaction_sample` (one frame, simulated strokes, stage 3's losses) on
  every training frame, and `video_clip` 2-frame pairs of consecutive approved frames of a group at most
  `pair_gap` video frames apart (stage 2's loss). SGD + CLR triangular2 as the seed; the encoder stays frozen
  unless `train_encoder` (few masks: adapt the decoders only).
- Measure: mean IoU of box-only segmentation on held-back frames, and of one-step propagation to each held-back
  frame from its group's nearest training frame (within `pair_gap`). The score is their mean; the new model is
  accepted only when its score beats the old one's by more than `min_gain` (ties keep the old one).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

from scribblebox.models.networks.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    versioned_path,
)
from scribblebox.models.networks.crops import MARGIN, convert, paste, warp
from scribblebox.models.networks.learned_engine import LearnedPropagator, pick_device
from scribblebox.models.networks.model import ScribbleBoxModel
from scribblebox.models.video import ArrayVideo

from .clips import VideoFrames, video_clip
from .interactions import interaction_sample
from .schedule import clr_triangular2, set_lr
from .steps import Batch, interactive_step, to_device, video_step
from .train import CLIP_NORM, MOMENTUM, WEIGHT_DECAY, trainable

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Step = Callable[[ScribbleBoxModel, Batch, "Batch | None"], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class ApprovedSample:
    frame: np.ndarray  # (H, W, 3) uint8, BGR as the video decodes it
    box: np.ndarray  # (4,) x, y, w, h in pixels
    mask: np.ndarray  # (H, W) bool
    group: str  # one object in one video
    index: int  # the frame's index in its video


@dataclass(frozen=True)
class FitOptions:
    iters: int = 200
    batch: int = 4
    holdout: float = 0.2
    min_gain: float = 0.0
    pair_gap: int = 10  # video frames: approved frames this close form propagation pairs
    lr_min: float = 1e-5
    lr_max: float = 1e-3
    cycles: int = 2
    train_encoder: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 0 or self.batch < 2:
            raise ValueError(f"fit needs iters >= 0 and batch >= 2 (batch norm), got {self.iters} and {self.batch}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a share in (0, 1), got {self.holdout}")


@dataclass
class FitReport:
    before: dict[str, float]
    after: dict[str, float]
    iterations: int
    seconds: float
    accepted: bool
    reason: str
    train_frames: int
    held_frames: int
    model: ScribbleBoxModel | None = field(default=None, repr=False)  # the fine-tuned network
    train_args: dict[str, Any] = field(default_factory=dict, repr=False)  # to store with it (crop, margin, ...)

    def to_dict(self) -> dict[str, Any]:
        """What the registry and the checkpoint record (no weights)."""
        return {"before": self.before, "after": self.after, "iterations": self.iterations,
                "seconds": round(self.seconds, 1), "accepted": self.accepted, "reason": self.reason,
                "train_frames": self.train_frames, "held_frames": self.held_frames}

    def save(self, folder: str | Path, name: str = "scribblebox-ft") -> Path:
        """The fine-tuned model as the next `name-vNNN.pt` in folder, written atomically."""
        if self.model is None:
            raise ValueError("this report holds no model to save")
        return save_checkpoint(versioned_path(folder, name), self.model, stage="finetune", iteration=self.iterations,
                               metrics=self.to_dict(), train_args=self.train_args)


def split(samples: Sequence[ApprovedSample], holdout: float) -> tuple[list[ApprovedSample], list[ApprovedSample]]:
    """(train, held back) by the hash rule of the module docstring."""
    if len(samples) < 2:
        raise ValueError(f"fine-tuning needs at least 2 approved frames (one is held back), got {len(samples)}")
    keyed = sorted(samples, key=_hash)
    held = [s for s in keyed if _hash(s) < holdout]
    if not held or len(held) == len(keyed):
        held = keyed[:1]
    ids = {id(s) for s in held}
    return [s for s in keyed if id(s) not in ids], held


def _hash(sample: ApprovedSample) -> float:
    digest = hashlib.sha1(f"{sample.group}\0{int(sample.index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def banks(samples: Sequence[ApprovedSample], pair_gap: int) -> tuple[list[VideoFrames], list[VideoFrames]]:
    """(one VideoFrames per group, one per run of >= 2 approved frames at most pair_gap apart) for the generators."""
    groups: dict[str, list[ApprovedSample]] = {}
    for s in samples:
        if s.mask.any():
            groups.setdefault(s.group, []).append(s)
    singles, runs = [], []
    for name, items in sorted(groups.items()):
        items.sort(key=lambda s: s.index)
        singles.append(_frames(name, items))
        run = [items[0]]
        for s in items[1:]:
            if s.index - run[-1].index > pair_gap:
                runs += [_frames(f"{name}@{run[0].index}", run)] if len(run) > 1 else []
                run = []
            run.append(s)
        runs += [_frames(f"{name}@{run[0].index}", run)] if len(run) > 1 else []
    return singles, runs


def _frames(name: str, items: list[ApprovedSample]) -> VideoFrames:
    return VideoFrames(name, [s.frame for s in items], [s.mask.astype(np.uint8) for s in items],
                       np.arange(len(items), dtype=np.int64))


def fit_step(model: ScribbleBoxModel, inter: Batch, pairs: Batch | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 3's interactive losses on single frames, plus stage 2's propagation loss on pairs when there are any."""
    loss, metrics = interactive_step(model, inter)
    if pairs is not None:
        pair_loss, pair_metrics = video_step(model, pairs)
        loss = loss + pair_loss
        metrics = {**metrics, "iou_pair": pair_metrics["iou"]}
    return loss, metrics


def finetune(base: str | Path, samples: Sequence[ApprovedSample], options: FitOptions = FitOptions(),
             progress: Progress | None = None, step: Step = fit_step, serving: Any = None) -> FitReport:
    """Fine-tune the checkpoint `base` on the samples' training share and measure old vs new on the held-back one.

    serving: the mask engine the project uses now when it is not `base` (e.g. the classical one): then "old" is that
    engine, measured the same way, so a fine-tuned network replaces it only when it does better.
    """
    report = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    device = pick_device(options.device)
    old, payload = load_checkpoint(base, map_location=device)
    args = dict(payload.get("train_args") or {})
    crop, margin = int(args.get("crop", 256)), float(args.get("margin", MARGIN))
    train_set, held = split([s for s in samples if s.mask.any()], options.holdout)  # empty: object absent
    singles, runs = banks(train_set, options.pair_gap)
    report(0.0, f"measuring the current model on {len(held)} held-back frames")
    before = (measure(old, held, train_set, crop, margin, options.pair_gap) if serving is None
              else measure_engine(serving, held, train_set, options.pair_gap))
    model = copy.deepcopy(old)
    done, reason = _train(model, singles, runs, options, crop, margin, device, step, report)
    report(0.95, "measuring the fine-tuned model")
    after = measure(model, held, train_set, crop, margin, options.pair_gap) if reason is None else {}
    if reason is None:
        gain = after["score"] - before["score"]
        accepted = gain > options.min_gain
        reason = (f"held-back score {after['score']:.4f} vs {before['score']:.4f} "
                  f"({'better' if accepted else 'not better'} by more than {options.min_gain:g})")
    else:
        accepted = False
    args.update({"crop": crop, "margin": margin, "base": str(base), "finetune": {
        **options.__dict__, "train_frames": len(train_set), "held_frames": len(held)}})
    out = FitReport(before, after, done, time.perf_counter() - start, accepted, reason, len(train_set), len(held),
                    model.eval(), args)
    log.info("fine-tuned %s on %d frames (%d held back), %d iterations in %.1f s: %s, %s", base, len(train_set),
             len(held), done, out.seconds, "accepted" if accepted else "rejected", reason)
    return out


def _train(model: ScribbleBoxModel, singles: list[VideoFrames], runs: list[VideoFrames], options: FitOptions,
           crop: int, margin: float, device: torch.device, step: Step, report: Progress) -> tuple[int, str | None]:
    """(iterations done, why it stopped early or None)."""
    if options.iters == 0:
        return 0, None
    params = ([p for p in model.parameters()] if options.train_encoder
              else trainable(model, "interactive"))  # freezes the encoder
    optimizer = torch.optim.SGD(params, lr=options.lr_min, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    model.train()
    ema: dict[str, float] = {}
    try:
        for it in range(options.iters):
            rng = np.random.default_rng([options.seed, it])
            inter = default_collate([interaction_sample(singles, rng, crop, margin) for _ in range(options.batch)])
            pairs = (default_collate([video_clip(runs, rng, crop, margin, length=2, max_gap=1)
                                      for _ in range(options.batch)]) if runs else None)
            set_lr(optimizer, clr_triangular2(it, options.iters, options.cycles, options.lr_min, options.lr_max))
            loss, metrics = step(model, to_device(inter, device), to_device(pairs, device) if pairs else None)
            if not math.isfinite(loss.item()):
                return it, f"the loss became {loss.item()} at iteration {it}: lower training.fit_lr_max"
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            optimizer.step()
            ema = {k: v if k not in ema else 0.9 * ema[k] + 0.1 * v for k, v in metrics.items()}
            if (it + 1) % max(1, options.iters // 20) == 0 or it + 1 == options.iters:
                values = " ".join(f"{k} {v:.3f}" for k, v in ema.items())
                report(0.05 + 0.9 * (it + 1) / options.iters, f"fine-tuning {it + 1}/{options.iters} {values}")
    finally:
        model.freeze_encoder(False)
        model.eval()
    return options.iters, None


@torch.inference_mode()
def measure(model: ScribbleBoxModel, held: Sequence[ApprovedSample], train_set: Sequence[ApprovedSample], crop: int,
            margin: float, pair_gap: int) -> dict[str, float]:
    """box_iou (always), prop_iou (when some held-back frame has a training frame of its group within pair_gap),
    score: their mean."""
    net = LearnedPropagator(model.eval(), crop, margin)
    boxes, props = [], []
    for target in held:
        boxes.append(iou(net.segmenter.segment(target.frame, target.box, []), target.mask))
        near = [s for s in train_set if s.group == target.group and abs(s.index - target.index) <= pair_gap]
        if near:
            source = min(near, key=lambda s: (abs(s.index - target.index), s.index))
            props.append(iou(propagate_once(net, source, target), target.mask))
    out = {"box_iou": round(float(np.mean(boxes)), 4)}
    if props:
        out["prop_iou"] = round(float(np.mean(props)), 4)
    out["score"] = round(float(np.mean(list(out.values()))), 4)
    return out


def measure_engine(engine: Any, held: Sequence[ApprovedSample], train_set: Sequence[ApprovedSample],
                   pair_gap: int) -> dict[str, float]:
    """`measure` for any mask engine with MaskEngine.run: box-only masks, and one step of propagation from the
    nearest training frame (a 2-frame video whose first frame is approved)."""
    boxes, props = [], []
    for target in held:
        one = engine.run(ArrayVideo(target.frame[None]), np.asarray(target.box, np.float64)[None], [])
        boxes.append(iou(one.masks.get(0, np.zeros_like(target.mask)), target.mask))
        near = [s for s in train_set if s.group == target.group and abs(s.index - target.index) <= pair_gap]
        if near:
            source = min(near, key=lambda s: (abs(s.index - target.index), s.index))
            two = engine.run(ArrayVideo(np.stack([source.frame, target.frame])),
                             np.stack([source.box, target.box]).astype(np.float64), [], approved={0: source.mask})
            props.append(iou(two.masks.get(1, np.zeros_like(target.mask)), target.mask))
    out = {"box_iou": round(float(np.mean(boxes)), 4)}
    if props:
        out["prop_iou"] = round(float(np.mean(props)), 4)
    out["score"] = round(float(np.mean(list(out.values()))), 4)
    return out


def propagate_once(net: LearnedPropagator, source: ApprovedSample, target: ApprovedSample) -> np.ndarray:
    """The target's mask propagated in one step from the source frame and its mask (reference and previous mask)."""
    ms, mt = net.matrix(source.box), net.matrix(target.box)
    soft = warp(source.mask.astype(np.float32), ms, net.crop)
    reference = net.model.propagation.reference(net.image(source.frame, ms), net.maps(soft))
    features = net.model.encoder(net.image(target.frame, mt), net.maps(convert(soft, ms, mt)))
    logits = net.model.propagation.decode(reference, features, None)
    return paste(net.soft(logits), mt, target.mask.shape) > 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def shrink(frame: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(frame, mask, scale) with the long side at most max_side, as the training banks keep frames in memory."""
    scale = max_side / max(frame.shape[:2])
    if scale >= 1:
        return frame, mask, 1.0
    size = (max(round(frame.shape[1] * scale), 1), max(round(frame.shape[0] * scale), 1))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return small, cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool), scale
