"""CVAT annotations (cvat_sdk models) <-> engine objects: anchors, keyframes, box tracks, masks, clicks.

CVAT frames are the task's 0-based frame numbers, like the engines'. A CVAT track is a list of keyframes that the
server interpolates linearly; an ``outside: true`` keyframe ends the object until the next keyframe. The engine's
``Keyframe(enabled=False)`` means "absent after this frame", so it becomes an outside keyframe on the next frame.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from cvat_sdk import models

from ...models.geometry import as_box, interpolate
from ...models.masks import Scribble
from ...models.track import Keyframe, render_keyframes
from . import rle
from .shapes import box_to_rect, flat_to_xy, rect_to_box

SOURCE = "semi-auto"  # what CVAT calls annotations made by a tool from the user's input


def shape_type(item) -> str:
    """A shape's or track shape's type as a plain string ("rectangle", "mask", ...)."""
    return str(getattr(item.type, "value", item.type))


def label_id(labels: Sequence, name: str) -> int:
    """The id of the task label called `name`; the error lists the labels there are."""
    for label in labels:
        if label.name == name:
            return int(label.id)
    raise ValueError(f"no label {name!r} in this task; its labels: {sorted(label.name for label in labels)}")


def one_label(items: Iterable, what: str) -> int:
    """The only label among `items`, or an error asking for --label."""
    ids = sorted({int(item.label_id) for item in items})
    if len(ids) != 1:
        found = f"{len(ids)} labels (ids {ids})" if ids else "none"
        raise ValueError(f"expected the {what} of one label, found {found}: name it with --label")
    return ids[0]


def shape_anchors(shapes: Sequence) -> list[Keyframe]:
    """Rectangles the user drew as separate shapes -> one anchor per frame (two on one frame is an error)."""
    anchors: dict[int, Keyframe] = {}
    for shape in shapes:
        if shape_type(shape) != "rectangle" or getattr(shape, "outside", False):
            continue
        if shape.frame in anchors:
            raise ValueError(f"frame {shape.frame} has two rectangles of this label: keep one box per frame "
                             "for the object, or pick a track with --track-id")
        anchors[int(shape.frame)] = Keyframe.of(shape.frame, rect_to_box(shape.points))
    return [anchors[f] for f in sorted(anchors)]


def track_anchors(track) -> list[Keyframe]:
    """A CVAT rectangle track -> keyframes with enabled=False before each outside keyframe."""
    out: list[Keyframe] = []
    for shape in sorted(track.shapes, key=lambda s: s.frame):
        box = rect_to_box(shape.points)
        if not getattr(shape, "outside", False):
            out.append(Keyframe.of(shape.frame, box))
        elif out and out[-1].enabled:
            last = out[-1]
            if shape.frame - 1 > last.frame:  # the object was interpolated up to the frame before
                at = interpolate(np.array([shape.frame - 1]), as_box(last.box), box, last.frame, shape.frame)[0]
                out.append(Keyframe.of(shape.frame - 1, at, False))
            else:
                out[-1] = Keyframe.of(last.frame, last.box, False)
    return out


def track_boxes(track, num_frames: int) -> np.ndarray:
    """Boxes per task frame as CVAT draws the track; NaN where the object is absent."""
    return render_keyframes(track_anchors(track), num_frames)


def keyframes_track(keyframes: Sequence[Keyframe], label: int, num_frames: int) -> models.LabeledTrackRequest:
    """Engine keyframes -> a new CVAT rectangle track (outside keyframes where the object is lost)."""
    frames = {k.frame for k in keyframes}
    shapes = []
    for k in sorted(keyframes, key=lambda k: k.frame):
        rect = box_to_rect(k.box)
        shapes.append(models.TrackedShapeRequest(type="rectangle", frame=k.frame, points=rect, outside=False))
        if not k.enabled and k.frame + 1 < num_frames and k.frame + 1 not in frames:
            shapes.append(models.TrackedShapeRequest(type="rectangle", frame=k.frame + 1, points=rect, outside=True))
    if not shapes:
        raise ValueError("the engine returned no keyframes to write")
    return models.LabeledTrackRequest(label_id=label, frame=shapes[0].frame, shapes=shapes, source=SOURCE)


def mask_shapes(masks: dict[int, np.ndarray], label: int, offset: int = 0) -> list[models.LabeledShapeRequest]:
    """Full-frame masks by (local) frame -> one CVAT mask shape per non-empty mask, on frame offset + f."""
    return [models.LabeledShapeRequest(type="mask", frame=offset + f, label_id=label, points=rle.encode(m),
                                       source=SOURCE)
            for f, m in sorted(masks.items()) if m.any()]


def point_scribbles(shapes: Sequence, positive: bool, first: int, stop: int) -> list[Scribble]:
    """CVAT "points" shapes in [first, stop) -> one-point scribbles on local frames (each point one click)."""
    out = []
    for shape in shapes:
        if shape_type(shape) == "points" and first <= shape.frame < stop:
            out += [Scribble(int(shape.frame) - first, p[None], positive) for p in flat_to_xy(shape.points)]
    return out
