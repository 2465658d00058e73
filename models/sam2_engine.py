"""The optional SAM2 mask engine (`masks.engine: sam2`): Meta's SAM2 video predictor behind the MaskEngine contract.

Prompts go on the frames the user touched: strokes become SAM2 point prompts (positive 1, negative 0) together
with that frame's box; an approved mask becomes a mask prompt (and the frame's strokes, if any, then refine it).
Without any touched frame, the first frame of each box run is prompted with its box alone. SAM2 then propagates
forward from the earliest prompt frame and backward from it, over the frames spanned by the box track; every
prompt frame is a conditioning frame, so frames between two prompts see both. Masks come back at full frame
resolution on every boxed frame; approved masks without strokes come back unchanged. SAM2 is deterministic and
re-run from all strokes so far, so `previous` is not needed (it is accepted for the contract).

Weights are never downloaded: `masks.sam2_checkpoint` is a user-supplied file matching `masks.sam2_config` (a
config inside the sam2 package, e.g. configs/sam2.1/sam2.1_hiera_t.yaml for sam2.1_hiera_tiny.pt). The value
"random" builds random weights at a 256-px input: for tests only (masks are meaningless).

Memory: frames are fed lazily (read from `Video`, sequentially per sweep); SAM2's per-frame state (memory features,
low-res logits) is ~0.9 MB per frame at the default 1024-px input (~60 kB at 256 px), plus one bool mask (H x W
bytes) per boxed frame in the result. The model is built once per process per (config, checkpoint, device).
Install: scripts/install-sam2.sh.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import pickle
import threading
import time
from collections.abc import Sequence
from importlib import resources
from unittest import mock

import cv2
import numpy as np
import torch

from .mask_engine import MaskEngine
from .masks import MaskResult, Scribble
from .progress import Meter, Progress
from .propagation import box_runs, check_boxes
from .segmentation import enforce_strokes, valid_box
from .video import Video

log = logging.getLogger(__name__)

RANDOM = "random"  # masks.sam2_checkpoint for tests only: random weights, 256-px input
RANDOM_IMAGE_SIZE = 256
MAX_POINTS_PER_STROKE = 8  # a scribble's polyline is sampled to at most this many point prompts
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # SAM2's image normalisation (RGB, 0..1)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_INIT_LOCK = threading.Lock()  # init_state's frame loader is swapped for ours while it runs


def _import_sam2():
    try:
        import sam2  # noqa: F401  (registers SAM2's bundled configs with hydra)
        from sam2 import build_sam, sam2_video_predictor
    except ImportError as e:
        raise RuntimeError("masks.engine 'sam2' needs the sam2 package: run scripts/install-sam2.sh "
                           f"(import failed: {e})") from e
    return build_sam, sam2_video_predictor


def check_config(config: str) -> str:
    """The config name, if the installed sam2 package has it (hydra resolves names inside the package only)."""
    import sam2

    root = resources.files(sam2)
    if not root.joinpath(config).is_file():
        known = sorted(f"configs/{d.name}/{f.name}" for d in root.joinpath("configs").iterdir() if d.is_dir()
                       for f in d.iterdir() if f.name.endswith(".yaml"))
        raise ValueError(f"masks.sam2_config {config!r} is not a config of the installed sam2 package; known: {known}")
    return config


def check_checkpoint(path: str | None) -> str:
    if not path:
        raise ValueError("masks.engine 'sam2' needs masks.sam2_checkpoint (or SCRIBBLEBOX_SAM2_CHECKPOINT): the "
                         "path of a SAM2 checkpoint file you supply, e.g. /weights/sam2.1_hiera_tiny.pt (none is "
                         "downloaded)")
    if path != RANDOM and not os.path.isfile(path):
        raise ValueError(f"masks.sam2_checkpoint {path!r} is not a file: mount the SAM2 checkpoint there "
                         "(e.g. sam2.1_hiera_tiny.pt with masks.sam2_config configs/sam2.1/sam2.1_hiera_t.yaml)")
    return path if path == RANDOM else os.path.abspath(path)


@functools.lru_cache(maxsize=2)
def load_predictor(config: str, checkpoint: str, device: str, mtime: float = 0.0):
    """SAM2's video predictor, built once per process per (config, checkpoint file version, device)."""
    build_sam, _ = _import_sam2()
    check_config(config)
    random = checkpoint == RANDOM
    extra = [f"++model.image_size={RANDOM_IMAGE_SIZE}"] if random else []
    try:
        predictor = build_sam.build_sam2_video_predictor(config, None if random else checkpoint, device=device,
                                                         hydra_overrides_extra=extra)
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{checkpoint} does not load into SAM2 config {config} ({type(e).__name__}: {e}): use a SAM2 "
                         "checkpoint and the config of the same model size (hiera_t/s/b+/l, sam2 or sam2.1)") from e
    if importlib.util.find_spec("sam2._C") is None:  # built without CUDA (install-sam2.sh): SAM2 would skip its
        predictor.fill_hole_area = 0  # hole filling anyway, with a warning per run
    log.info("SAM2 %s (%s) on %s, %d-px input", config, "random weights, tests only" if random else checkpoint,
             device, predictor.image_size)
    return predictor


class _Frames:
    """SAM2's `images` sequence over a Video: frames resized and normalised on demand; sequential within a sweep
    (`expect`), so a compressed video is decoded forward or backward in blocks rather than seeked per frame."""

    def __init__(self, video: Video, size: int, device: torch.device) -> None:
        self.video, self.size, self.device = video, size, device
        self._iter = None
        self._step = 1

    def expect(self, start: int, stop: int) -> None:
        """The next reads are (mostly) start, start±1, ... up to stop (exclusive)."""
        self._iter = iter(self.video.frames(start, stop)) if start != stop else None
        self._step = 1 if stop > start else -1

    def __len__(self) -> int:
        return self.video.num_frames

    def __getitem__(self, index: int) -> torch.Tensor:
        frame = self._sequential(int(index))
        if frame is None:
            frame = self.video.frame(int(index))
        rgb = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_LINEAR)[..., ::-1]
        image = (rgb.astype(np.float32) / 255.0 - _MEAN) / _STD
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(self.device)

    def _sequential(self, index: int) -> np.ndarray | None:
        """The frame from the sweep's iterator when `index` lies ahead of it (skipping frames SAM2 did not ask for)."""
        while self._iter is not None:
            got = next(self._iter, None)
            if got is None or (got[0] - index) * self._step > 0:
                self._iter = None  # past it or exhausted: random access from here
            elif got[0] == index:
                return got[1]
        return None


class Sam2MaskEngine:
    """Box track + strokes (+ approved masks) -> a mask on every boxed frame, by SAM2 (see the module docstring)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        _, self._module = _import_sam2()

    @classmethod
    def from_settings(cls, masks) -> Sam2MaskEngine:
        """From masks.sam2_checkpoint / sam2_config / device; raises ValueError when the checkpoint is not a file."""
        from .networks.learned_engine import pick_device

        _import_sam2()
        checkpoint = check_checkpoint(masks.sam2_checkpoint)
        config = check_config(masks.sam2_config)
        mtime = 0.0 if checkpoint == RANDOM else os.path.getmtime(checkpoint)
        return cls(load_predictor(config, checkpoint, str(pick_device(masks.device)), mtime))

    @torch.inference_mode()
    def run(self, video: Video, boxes: np.ndarray, scribbles: Sequence[Scribble],
            previous: MaskResult | None = None, approved: dict[int, np.ndarray] | None = None,
            progress: Progress | None = None) -> MaskResult:
        """Masks (full-frame bool) for every frame with a box; `approved` frames without strokes are kept as given.
        progress(fraction, message): once per frame SAM2 reads (prompt frames, then both sweeps)."""
        t0 = time.perf_counter()
        boxes = check_boxes(boxes, video.num_frames)
        by_frame = MaskEngine._check_scribbles(scribbles, boxes, video.num_frames)
        given = MaskEngine._check_approved(approved or {}, video)
        boxed = [f for f, b in enumerate(boxes) if valid_box(b)]
        prompts = sorted(set(by_frame) | set(given)) or [start for start, _ in box_runs(boxes)]
        if not boxed and not given:
            return MaskResult(masks={}, approved={}, seconds=time.perf_counter() - t0)
        lo, hi, first = min(boxed + prompts), max(boxed + prompts), prompts[0]
        meter = Meter(progress, len(prompts) + (hi - first + 1) + (first - lo + 1), "masks (SAM2)")
        frames = _Frames(video, self.predictor.image_size, self.predictor.device)
        state = self._init_state(frames, video)
        for f in prompts:
            self._prompt(state, f, boxes[f], by_frame.get(f, []), given.get(f))
            meter.add()
        masks: dict[int, np.ndarray] = {}
        for reverse, stop in ((False, hi + 1), (True, lo - 1)):
            frames.expect(first, stop)
            count = (hi - first) if not reverse else (first - lo)
            if reverse and count == 0:
                continue
            for f, _, logits in self.predictor.propagate_in_video(state, first, count, reverse=reverse):
                if valid_box(boxes[f]) or f in given:
                    masks[f] = (logits[0, 0] > 0).cpu().numpy()
                meter.add()
        done = dict(given)
        for f, strokes in by_frame.items():
            done[f] = masks[f] = enforce_strokes(masks[f], strokes)
        masks.update({f: m for f, m in given.items() if f not in by_frame})
        masks = {f: m for f, m in masks.items() if valid_box(boxes[f])}
        seconds = time.perf_counter() - t0
        meter.done(f"masks for {len(masks)} frames")
        log.debug("SAM2 masks for %d frames (%d prompted) in %.2f s", len(masks), len(prompts), seconds)
        return MaskResult(masks=masks, approved=done, seconds=seconds)

    def _init_state(self, frames: _Frames, video: Video) -> dict:
        """SAM2's init_state over our lazy frames (it only knows JPEG folders and MP4 paths)."""
        def loader(**_: object):
            return frames, video.height, video.width

        with _INIT_LOCK, mock.patch.object(self._module, "load_video_frames", loader):
            return self.predictor.init_state(video_path="<scribblebox video>", offload_state_to_cpu=False)

    def _prompt(self, state: dict, frame: int, box: np.ndarray, strokes: list[Scribble],
                mask: np.ndarray | None) -> None:
        if mask is not None:
            self.predictor.add_new_mask(state, frame, 1, torch.from_numpy(mask))
            if not strokes:
                return
        points, labels = stroke_points(strokes)
        x, y, w, h = (float(v) for v in box) if valid_box(box) else (np.nan,) * 4
        self.predictor.add_new_points_or_box(state, frame, 1, points=points, labels=labels,
                                             box=None if np.isnan(x) else [x, y, x + w, y + h])


def stroke_points(strokes: Sequence[Scribble]) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts (k, 2) x, y pixels and labels (k,) 1/0: each stroke sampled evenly along its polyline."""
    points, labels = [], []
    for s in strokes:
        line = np.asarray(s.points, dtype=np.float32).reshape(-1, 2)
        take = np.unique(np.linspace(0, len(line) - 1, min(len(line), MAX_POINTS_PER_STROKE)).round().astype(int))
        points.append(line[take])
        labels += [1 if s.positive else 0] * len(take)
    if not points:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int32)
    return np.concatenate(points), np.asarray(labels, dtype=np.int32)
