"""What a Label Studio mask task holds for an object, read from its payloads: the frame image list, the clicks,
the saved brush masks, and which of those masks are the user's corrections (not one of our answers).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import BadRequest
from ..state import MaskState, mask_digest
from .brush import decode_mask
from .config import LabelConfig
from .predict import newest_item, region_label

logger = logging.getLogger(__name__)
SAME_MASK_FRACTION = 0.005  # a saved mask within this share of its area (or SAME_MASK_MIN_PX) of our answer is ours
SAME_MASK_MIN_PX = 16


@dataclass(frozen=True)
class Click:
    id: str
    label: str
    item: int
    x: float  # percent of the image
    y: float
    positive: bool


@dataclass(frozen=True)
class FrameList:
    """The task's frame images: page k shows video frame k * step."""

    image: str  # the Image tag's name
    brush: str  # the BrushLabels tag on it
    count: int
    step: int

    def frame(self, item: int, num_frames: int) -> int:
        if not 0 <= item < self.count:
            raise BadRequest(f"item_index {item} is outside the task's {self.count} frame images", status=422)
        frame = item * self.step
        if frame >= num_frames:
            raise BadRequest(f"frame image {item} (video frame {frame}) is beyond the video's {num_frames} frames: "
                             "the frame list does not match the video (check 'frame_step')", status=422)
        return frame

    def items(self, num_frames: int) -> Iterable[tuple[int, int]]:
        """(item, video frame) for every page that shows a frame of the video."""
        for item in range(self.count):
            if item * self.step < num_frames:
                yield item, item * self.step


def frame_list(config: LabelConfig, data: Mapping) -> FrameList:
    """The image list that carries the masks, with its size and step from the task data."""
    for image, key in config.image_lists.items():
        brush = config.brush_for(image)
        if brush is None:
            continue
        frames = data.get(key)
        if not isinstance(frames, list) or not frames:
            raise BadRequest(f"task data has no frame list under {key!r} (Image tag {image!r}); "
                             "create the task with `scribblebox import-video`", detail={"keys": sorted(data)})
        step = data.get("frame_step", 1)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise BadRequest(f"task data 'frame_step' must be a positive integer, got {step!r}")
        return FrameList(image, brush, len(frames), step)
    raise BadRequest("labeling config has no <Image valueList> with <BrushLabels>: see config/label_studio/video_masks.xml")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def clicks_in(result: Iterable, config: LabelConfig) -> list[Click]:
    """Smart keypoints on a mask image list; ones without x/y are skipped, ones without a label refused."""
    clicks = []
    for n, region in enumerate(result or []):
        if not isinstance(region, Mapping) or region.get("type") != "keypointlabels":
            continue
        to_name = region.get("to_name")
        if to_name not in config.image_lists or config.brush_for(to_name) is None:
            continue
        value = region.get("value") if isinstance(region.get("value"), Mapping) else {}
        x, y = _number(value.get("x")), _number(value.get("y"))
        if x is None or y is None:
            continue
        label = region_label(region)
        if label is None:
            raise BadRequest("a click has no label: pick the object's label, then click", detail={"region": region.get("id")})
        item = region.get("item_index", 0)
        if isinstance(item, bool) or not isinstance(item, int):
            raise BadRequest(f"a click's item_index must be an integer, got {item!r}", detail={"region": region.get("id")})
        clicks.append(Click(str(region.get("id") or f"click-{n}"), label, item, x, y, region.get("is_positive") is not False))
    return clicks


def saved_masks(result: Iterable, frames: FrameList, shape: tuple[int, int]) -> dict[str, dict[int, np.ndarray]]:
    """label -> item -> mask of the saved ``brushlabels`` on the frame list (several regions of one label: union),
    resized to the video's (height, width) when the images differ."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for region in result or []:
        if not isinstance(region, Mapping) or region.get("type") != "brushlabels" or region.get("to_name") != frames.image:
            continue
        value = region.get("value") if isinstance(region.get("value"), Mapping) else {}
        label, item = region_label(region), region.get("item_index", 0)
        if label is None or not isinstance(value.get("rle"), list) or not isinstance(item, int):
            logger.warning("skipping brush region %s: no label, no rle or no item_index", region.get("id"))
            continue
        width, height = region.get("original_width"), region.get("original_height")
        if not isinstance(width, int) or not isinstance(height, int):
            width, height = shape[1], shape[0]
        try:
            mask = decode_mask(value["rle"], width, height)
        except ValueError as err:
            raise BadRequest(f"brush region {region.get('id')}: {err}", status=422) from None
        if mask.shape != shape:
            mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
        masks = out.setdefault(label, {})
        masks[item] = masks[item] | mask if item in masks else mask
    return out


def newest_result(task: Mapping) -> list:
    """Result of the most recently updated annotation or draft (what the annotator has now), else []. Anything
    but lists where Label Studio sends lists counts as nothing (hostile or broken payloads must not crash)."""
    items = [i for key in ("annotations", "drafts") if isinstance(task.get(key), list) for i in task[key]]
    chosen = newest_item(items)
    result = chosen.get("result") if chosen is not None else None
    return list(result) if isinstance(result, list) else []


def same_mask(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether saved mask `a` is our answer `b`, up to what re-rendering can do: differences on the 1-pixel band
    around b's boundary are ignored, and a few more pixels (SAME_MASK_*) are allowed."""
    if a.shape != b.shape:
        return False
    kernel = np.ones((3, 3), np.uint8)
    b8 = b.astype(np.uint8)
    band = cv2.dilate(b8, kernel).astype(bool) & ~cv2.erode(b8, kernel).astype(bool)
    differ = int(np.count_nonzero((a ^ b) & ~band))
    return differ <= max(SAME_MASK_MIN_PX, SAME_MASK_FRACTION * max(int(a.sum()), int(b.sum())))


def corrections(saved: Mapping[int, np.ndarray], state: MaskState | None) -> dict[int, np.ndarray]:
    """The saved frames (video frame -> mask) the user made or changed: not one of our answers on that frame.
    A frame the user corrected earlier stays a correction while it is saved."""
    out = {}
    for frame, mask in saved.items():
        ours = (state is not None and frame not in state.approved
                and (mask_digest(mask) in state.seen.get(frame, [])
                     or (frame in state.predicted and same_mask(mask, state.predicted[frame]))))
        if not ours:
            out[frame] = mask
    return out
