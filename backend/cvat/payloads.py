"""Parse and validate the JSON bodies CVAT posts to nuclio functions; every refusal is a `BadRequest` (HTTP 400).

Interactor (version 2): ``{"image": b64, "pos_points": [[x, y], ...], "neg_points": [...], "obj_bbox": [[x1, y1],
[x2, y2]] | null}``. Tracker: ``{"image": b64, "shapes": [[x1, y1, x2, y2] | {"type", "points"} | null, ...],
"states": [{...} | null, ...]}``: CVAT sends shapes and no states to start, then states and null shapes per frame.
Coordinates are image pixels; a point may lie on the image's far edge (x == width) but not beyond.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import BadRequest

MAX_OBJECTS = 256  # shapes per tracker call: far more than a person tracks at once


def read_body(body: Any) -> dict:
    """The event body as a dict: nuclio hands JSON bodies over parsed, other content types as bytes/str."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(f"the request body is not JSON ({err}): send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def decode_image(value: Any) -> np.ndarray:
    """Base64 JPEG/PNG (a data: URL prefix is allowed) -> BGR uint8 (H, W, 3), as stored (EXIF orientation ignored,
    like CVAT's own functions that open frames with PIL)."""
    if value is None:
        raise BadRequest('"image" is missing: send the frame as a base64-encoded JPEG or PNG')
    if not isinstance(value, str) or not value:
        raise BadRequest(f'"image" must be a base64 string, got {type(value).__name__}')
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"image" is not valid base64: encode the JPEG/PNG bytes with standard base64') from None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise BadRequest('"image" decodes to bytes that are not a JPEG or PNG image')
    return image


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{where} must be a finite number, got {value!r}")
    return float(value)


def parse_points(value: Any, name: str, width: int, height: int) -> np.ndarray:
    """[[x, y], ...] inside the image -> (k, 2) float; null or missing is no points."""
    if value is None:
        return np.zeros((0, 2))
    if not isinstance(value, list):
        raise BadRequest(f'"{name}" must be a list of [x, y] points, got {type(value).__name__}')
    out = []
    for i, point in enumerate(value):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise BadRequest(f'"{name}"[{i}] must be [x, y], got {point!r}')
        x, y = (_number(v, f'"{name}"[{i}]') for v in point)
        if not (0 <= x <= width and 0 <= y <= height):
            raise BadRequest(f'"{name}"[{i}] = [{x:g}, {y:g}] lies outside the {width}x{height} image')
        out.append((x, y))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def parse_rect(value: Any, where: str, width: int, height: int) -> np.ndarray:
    """[x1, y1, x2, y2] (or [[x1, y1], [x2, y2]]) overlapping the image -> box [x, y, w, h] clipped to it."""
    flat = [v for p in value for v in p] if isinstance(value, list) and value and isinstance(value[0], list) else value
    if not isinstance(flat, list) or len(flat) != 4:
        raise BadRequest(f"{where} must be a rectangle [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = (_number(v, where) for v in flat)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 - cx1 < 1 or cy2 - cy1 < 1:
        raise BadRequest(f"{where} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is empty or outside the {width}x{height} image")
    return np.array([cx1, cy1, cx2 - cx1, cy2 - cy1])


@dataclass
class InteractorRequest:
    image: np.ndarray  # BGR (H, W, 3)
    positive: np.ndarray  # (k, 2) x, y pixels
    negative: np.ndarray  # (k, 2)
    box: np.ndarray | None  # x, y, w, h pixels


def parse_interactor(body: Any) -> InteractorRequest:
    data = read_body(body)
    image = decode_image(data.get("image"))
    h, w = image.shape[:2]
    positive = parse_points(data.get("pos_points"), "pos_points", w, h)
    negative = parse_points(data.get("neg_points"), "neg_points", w, h)
    box = data.get("obj_bbox")
    box = None if box is None else parse_rect(box, '"obj_bbox"', w, h)
    if len(positive) == 0 and box is None:
        raise BadRequest("give at least one positive point or a box around the object")
    return InteractorRequest(image, positive, negative, box)


@dataclass
class TrackerRequest:
    image: np.ndarray
    shapes: list[np.ndarray | None]  # box x, y, w, h to start from, or None
    states: list[dict | None]  # state from the previous call, or None


def _shape(value: Any, i: int, width: int, height: int) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, dict):  # the newer form, when a function declares supported_shape_types
        if value.get("type") != "rectangle":
            raise BadRequest(f'"shapes"[{i}] is a {value.get("type")!r}: this tracker follows rectangles only')
        value = value.get("points")
    return parse_rect(value, f'"shapes"[{i}]', width, height)


def parse_tracker(body: Any) -> TrackerRequest:
    data = read_body(body)
    image = decode_image(data.get("image"))
    h, w = image.shape[:2]
    shapes, states = data.get("shapes") or [], data.get("states") or []
    if not isinstance(shapes, list) or not isinstance(states, list):
        raise BadRequest('"shapes" and "states" must be lists (one item per tracked object)')
    count = max(len(shapes), len(states))
    if count == 0:
        raise BadRequest('nothing to track: send "shapes" to start or "states" to continue')
    if count > MAX_OBJECTS:
        raise BadRequest(f"at most {MAX_OBJECTS} objects per call, got {count}")
    parsed_shapes = [_shape(shapes[i] if i < len(shapes) else None, i, w, h) for i in range(count)]
    parsed_states = [states[i] if i < len(states) else None for i in range(count)]
    for i, (shape, state) in enumerate(zip(parsed_shapes, parsed_states, strict=True)):
        if state is None and shape is None:
            raise BadRequest(f"object #{i} has neither a shape nor a state: draw its rectangle, track again")
        if state is not None and not isinstance(state, dict):
            raise BadRequest(f'"states"[{i}] is not a state this tracker wrote: start tracking the object again')
    return TrackerRequest(image, parsed_shapes, parsed_states)
