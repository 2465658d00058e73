"""Native CVAT functions for `cvat-cli function create-native` / `run-agent` (cvat_sdk.auto_annotation).

- `Tracker`: rectangles and masks. The agent keeps each state in memory, so unlike the nuclio tracker it holds a
  live engine tracker (its learned filters) and, for masks, the previous frame and mask: the box is tracked, then
  the engine's mask propagator carries the mask from the previous frame into the new box.
- `Interactor`: clicks and an optional box -> one mask, the same answer as the nuclio interactor.

Load with ``--function-module scribblebox.backend.cvat.native`` and ``-p kind=str:tracker`` (default) or
``-p kind=str:interactor``; both read the usual ScribbleBox config (SCRIBBLEBOX_CONFIG, SCRIBBLEBOX_TRACKER...).
"""
from __future__ import annotations

from dataclasses import dataclass

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import PIL.Image

from ...models.geometry import clip_box, mask_to_box
from ...models.mask_engine import MaskEngine
from ...models.masks import MaskPropagator
from ...models.segmentation import GrabCutSegmenter
from ...models.trackers import Tracker as BoxTracker
from ...models.trackers import TrackerFactory, tracker_factory
from ...models.video import ArrayVideo
from ...settings import Settings, load_settings
from . import rle
from .interaction import segment_prompts
from .shapes import box_to_rect, rect_to_box


def to_bgr(image: PIL.Image.Image) -> np.ndarray:
    """The agent's PIL image as the engines' BGR uint8 array."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _usable(box: np.ndarray | None, width: int, height: int) -> np.ndarray | None:
    if box is None:
        return None
    box = clip_box(np.asarray(box, dtype=np.float64), width, height)
    return box if box[2] >= 1 and box[3] >= 1 else None


@dataclass
class TrackState:
    kind: str  # "rectangle" | "mask"
    tracker: BoxTracker
    box: np.ndarray  # x, y, w, h on the last frame
    frame: np.ndarray | None = None  # last frame (masks only)
    mask: np.ndarray | None = None  # last mask (masks only)


class Tracker:
    """cvat_sdk.auto_annotation TrackingFunction for rectangles and masks."""

    def __init__(self, factory: TrackerFactory, propagator: MaskPropagator) -> None:
        self.spec = cvataa.TrackingFunctionSpec(supported_shape_types=["rectangle", "mask"])
        self.factory = factory
        self.propagator = propagator

    @classmethod
    def from_settings(cls, settings: Settings) -> "Tracker":
        t = settings.tracking
        return cls(tracker_factory(t.tracker, t.nano_backbone, t.nano_head),
                   MaskEngine.from_settings(settings.masks).propagator)

    def preprocess_image(self, context: cvataa.TrackingFunctionContext, image: PIL.Image.Image) -> np.ndarray:
        return to_bgr(image)

    def init_tracking_state(self, context: cvataa.TrackingFunctionShapeContext, pp_image: np.ndarray,
                            shape: cvataa.TrackableShape) -> TrackState:
        h, w = pp_image.shape[:2]
        mask = None
        if shape.type == "rectangle":
            box = _usable(rect_to_box(shape.points), w, h)
        elif shape.type == "mask":
            mask = rle.decode(shape.points, w, h)
            box = mask_to_box(mask)
        else:
            raise ValueError(f"this function tracks rectangles and masks, not {shape.type!r}")
        if box is None:
            raise ValueError(f"the {shape.type} to track is empty or outside the {w}x{h} image")
        tracker = self.factory()
        tracker.init(pp_image, box)
        keep = pp_image if mask is not None else None
        return TrackState(shape.type, tracker, box, keep, mask)

    def track(self, context: cvataa.TrackingFunctionShapeContext, pp_image: np.ndarray,
              state: TrackState) -> cvataa.TrackableShape | None:
        h, w = pp_image.shape[:2]
        found, _ = state.tracker.update(pp_image)
        box = _usable(found, w, h)
        if box is None:
            return None
        if state.kind == "rectangle":
            state.box = box
            return cvataa.TrackableShape(type="rectangle", points=box_to_rect(box))
        assert state.frame is not None and state.mask is not None
        video = ArrayVideo(np.stack([state.frame, pp_image]))
        masks = self.propagator.propagate(video, np.stack([state.box, box]), {0: state.mask}, [])
        mask = masks.get(1)
        if mask is None or not mask.any():
            return None
        state.box, state.frame, state.mask = box, pp_image, mask
        return cvataa.TrackableShape(type="mask", points=rle.encode(mask))


class Interactor:
    """cvat_sdk.auto_annotation InteractionFunction: clicks (+ an optional box) -> a mask."""

    def __init__(self, segmenter: GrabCutSegmenter) -> None:
        self.spec = cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0, min_bounding_boxes=0)
        self.segmenter = segmenter

    @classmethod
    def from_settings(cls, settings: Settings) -> "Interactor":
        return cls(GrabCutSegmenter(settings.masks.work_size))

    def preprocess_image(self, context: cvataa.InteractionFunctionContext, image: PIL.Image.Image) -> np.ndarray:
        return to_bgr(image)

    def detect(self, context: cvataa.InteractionFunctionContext, pp_image: np.ndarray,
               prompts: cvataa.InteractionPrompts) -> list[cvataa.InteractionResultShape]:
        positive = np.asarray(prompts.pos_points, dtype=np.float64).reshape(-1, 2)
        negative = np.asarray(prompts.neg_points, dtype=np.float64).reshape(-1, 2)
        h, w = pp_image.shape[:2]
        box = None
        if prompts.bounding_box is not None:
            (x1, y1), (x2, y2) = prompts.bounding_box
            box = _usable(rect_to_box([x1, y1, x2, y2]), w, h)
            if box is None:
                raise ValueError(f"the bounding box {list(prompts.bounding_box)} is empty or outside the {w}x{h} image")
        mask = segment_prompts(self.segmenter, pp_image, positive, negative, box)
        if not mask.any():
            return []
        return [cvataa.InteractionResultShape(type="mask", points=rle.encode(mask))]


def create(kind: str = "tracker") -> Tracker | Interactor:
    """The factory cvat-cli calls (``-p kind=str:tracker`` or ``-p kind=str:interactor``)."""
    settings = load_settings()
    if kind == "tracker":
        return Tracker.from_settings(settings)
    if kind == "interactor":
        return Interactor.from_settings(settings)
    raise ValueError(f"unknown function kind {kind!r}: use -p kind=str:tracker or -p kind=str:interactor")
