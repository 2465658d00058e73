"""What the nuclio functions do per request, kept out of their main.py: parse CVAT's body, call the engine once,
answer CVAT's JSON. Each function object is built once per worker (init_context) and holds the engine."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BadRequest
from ...models.geometry import clip_box
from ...models.segmentation import GrabCutSegmenter
from ...models.trackers import TrackerFactory, tracker_factory
from ...settings import Settings
from . import rle
from .interaction import segment_prompts
from .payloads import parse_interactor, parse_tracker
from .shapes import box_to_rect, mask_polygon
from .tracker_state import FrameState, capture, previous_frame

log = logging.getLogger(__name__)


class Interactor:
    """Interactor v2: image + clicks (+ box) -> ``{"mask": crop rows of 0/255, "bounds": [l, t, r, b], "points"}``."""

    def __init__(self, segmenter: GrabCutSegmenter) -> None:
        self.segmenter = segmenter

    @classmethod
    def from_settings(cls, settings: Settings) -> "Interactor":
        return cls(GrabCutSegmenter(settings.masks.work_size))

    def __call__(self, body: Any) -> dict:
        req = parse_interactor(body)
        mask = segment_prompts(self.segmenter, req.image, req.positive, req.negative, req.box)
        cut = rle.crop(mask)
        if cut is None:
            return {"mask": [[0]], "bounds": [0, 0, 0, 0], "points": []}
        crop, bounds = cut
        return {"mask": (crop.astype(np.uint8) * 255).tolist(), "bounds": list(bounds), "points": mask_polygon(mask)}


class FrameTracker:
    """Rectangle tracker, one frame per call (see tracker_state for what survives between calls)."""

    def __init__(self, factory: TrackerFactory) -> None:
        self.factory = factory

    @classmethod
    def from_settings(cls, settings: Settings) -> "FrameTracker":
        t = settings.tracking
        return cls(tracker_factory(t.tracker, t.nano_backbone, t.nano_head))

    def __call__(self, body: Any) -> dict:
        req = parse_tracker(body)
        h, w = req.image.shape[:2]
        shapes: list[list[float] | None] = []
        states: list[dict] = []
        for i, (shape, raw) in enumerate(zip(req.shapes, req.states, strict=True)):
            if raw is None:  # start: the user's rectangle on this frame
                state = capture(req.image, shape)
                shapes.append(box_to_rect(shape))
            else:
                state = FrameState.from_json(raw, f'"states"[{i}]')
                tracker = self.factory()
                tracker.init(previous_frame(state, req.image), np.asarray(state.box))
                box, _ = tracker.update(req.image)
                if box is not None:
                    box = clip_box(np.asarray(box, dtype=np.float64), w, h)
                    box = box if box[2] >= 1 and box[3] >= 1 else None
                state = state.moved(box)
                shapes.append(None if box is None else box_to_rect(box))
            states.append(state.to_json())
        return {"shapes": shapes, "states": states}


def respond(context: Any, function: Callable[[Any], Any], body: Any) -> Any:
    """Run `function` on the event body and answer JSON: 400 with the reason for bad input, 500 (logged, no
    traceback to the client) for a failure of ours; the worker never dies on a request."""
    try:
        result, status = function(body), 200
    except BadRequest as err:
        log.warning("refused: %s", err.message)
        result, status = err.to_dict(), err.status
    except ValueError as err:  # the engine's checks: the request asked for something impossible
        log.warning("refused by the engine: %s", err)
        result, status = {"error": str(err), "detail": None}, 400
    except Exception as err:  # noqa: BLE001 - a function must answer, not crash
        log.exception("ScribbleBox function failed")
        result, status = {"error": "internal error", "detail": type(err).__name__}, 500
    return context.Response(body=json.dumps(result), headers={}, content_type="application/json", status_code=status)
