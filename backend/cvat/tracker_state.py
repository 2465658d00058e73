"""The small JSON state of the nuclio tracker, which CVAT drives one frame per call.

CVAT sends only the current frame; the previous one is gone, and the state travels (signed) through the browser
on every frame, so it must stay a few kilobytes. What it keeps: the last box, and a thumbnail of the object as the
user drew it on the start frame (the box plus `CONTEXT` of its size on each side, long side `PATCH_SIDE` px, JPEG).
Each call pastes that thumbnail into the current frame over the last box, starts a fresh engine tracker there, and
updates it once on the real frame: the template is always the user's object, so appearance errors do not pile up
from frame to frame. What it cannot keep: the tracker's learned filters and history, so a change of appearance or
scale far from the start frame, or a long occlusion, loses the object where `scribblebox cvat track` (Curve-VOT
over the whole video) would not.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..errors import BadRequest

VERSION = 1
PATCH_SIDE = 96  # thumbnail long side in pixels: ~3-5 KB of JPEG
CONTEXT = 0.5  # background kept around the box, as a fraction of its size per side
JPEG_QUALITY = 90


@dataclass(frozen=True)
class FrameState:
    box: tuple[float, float, float, float]  # x, y, w, h in pixels on the last frame
    patch: np.ndarray  # BGR thumbnail of the start frame around the start box
    rel: tuple[float, float, float, float]  # thumbnail's x0, y0, x1, y1 relative to the start box, in box units
    size: tuple[int, int]  # width, height of the frames
    lost: int = 0  # consecutive frames without an answer

    def to_json(self) -> dict:
        ok, jpeg = cv2.imencode(".jpg", self.patch, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode the tracker thumbnail")
        return {"v": VERSION, "box": [round(v, 2) for v in self.box], "rel": [round(v, 4) for v in self.rel],
                "size": list(self.size), "lost": self.lost, "patch": base64.b64encode(jpeg.tobytes()).decode("ascii")}

    @staticmethod
    def from_json(state: dict, where: str = "state") -> "FrameState":
        """Validate a state as CVAT returns it; anything else is a 400 that says to restart tracking."""
        restart = f"{where} is not a state this tracker wrote ({{}}): start tracking the object again"
        version = state.get("v") if isinstance(state, dict) else None
        if version != VERSION:
            raise BadRequest(restart.format(f"version {version!r}, expected {VERSION}"))
        try:
            box = tuple(float(v) for v in state["box"])
            rel = tuple(float(v) for v in state["rel"])
            size = tuple(int(v) for v in state["size"])
            lost = int(state.get("lost", 0))
            raw = base64.b64decode(state["patch"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise BadRequest(restart.format(f"{type(err).__name__}: {err}")) from None
        patch = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        ok = (patch is not None and len(box) == 4 and len(rel) == 4 and len(size) == 2 and min(size) > 0
              and bool(np.all(np.isfinite(box + rel))) and 0 < box[2] <= 2 * size[0] and 0 < box[3] <= 2 * size[1]
              and -2 <= rel[0] <= 0 and -2 <= rel[1] <= 0 and 1 <= rel[2] <= 3 and 1 <= rel[3] <= 3)
        if not ok:
            raise BadRequest(restart.format("garbled box, size or thumbnail"))
        return FrameState(box, patch, rel, size, lost)  # type: ignore[arg-type]

    def moved(self, box: np.ndarray | None) -> "FrameState":
        """The state for the next call: the new box, or the same one with one more lost frame."""
        if box is None:
            return replace(self, lost=self.lost + 1)
        return replace(self, box=tuple(float(v) for v in box), lost=0)


def capture(frame: np.ndarray, box: np.ndarray) -> FrameState:
    """The state on the start frame: `box` and the thumbnail of the frame around it."""
    h, w = frame.shape[:2]
    x, y, bw, bh = (float(v) for v in box)
    x0, y0 = int(max(np.floor(x - CONTEXT * bw), 0)), int(max(np.floor(y - CONTEXT * bh), 0))
    x1 = max(int(min(np.ceil(x + bw * (1 + CONTEXT)), w)), x0 + 1)
    y1 = max(int(min(np.ceil(y + bh * (1 + CONTEXT)), h)), y0 + 1)
    scale = min(1.0, PATCH_SIDE / max(x1 - x0, y1 - y0))
    size = (max(int(round((x1 - x0) * scale)), 1), max(int(round((y1 - y0) * scale)), 1))
    patch = cv2.resize(frame[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    rel = ((x0 - x) / bw, (y0 - y) / bh, (x1 - x) / bw, (y1 - y) / bh)
    return FrameState((x, y, bw, bh), patch, rel, (w, h))


def previous_frame(state: FrameState, frame: np.ndarray) -> np.ndarray:
    """A stand-in for the frame before `frame`: `frame` with the start thumbnail pasted over the last box."""
    h, w = frame.shape[:2]
    if (w, h) != tuple(state.size):
        raise BadRequest(f"this frame is {w}x{h}, the tracked object's frames were {state.size[0]}x{state.size[1]}: "
                         "start tracking again on this frame")
    x, y, bw, bh = state.box
    x0, y0 = int(round(x + state.rel[0] * bw)), int(round(y + state.rel[1] * bh))
    x1, y1 = max(int(round(x + state.rel[2] * bw)), x0 + 1), max(int(round(y + state.rel[3] * bh)), y0 + 1)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out = frame.copy()
    if cx1 > cx0 and cy1 > cy0:
        up = cv2.resize(state.patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        out[cy0:cy1, cx0:cx1] = up[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out
