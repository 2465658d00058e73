"""`scribblebox cvat track` and `scribblebox cvat propagate`: whole-video tools for any CVAT edition, over cvat-sdk.

track: the rectangles a user drew (separate shapes of one label, or one track) are the anchors of a Curve-VOT track
over the whole task; it is written back as a new CVAT track whose keyframes are the curve's keyframes.
propagate: the object's mask on --frame (and on any --approved frames) is carried over a frame range through the
object's box track, with CVAT "points" of the label (and of --negative-label) as clicks; one mask per frame.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import urllib3
from cvat_sdk import Client, models
from cvat_sdk.api_client.exceptions import ApiException
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction

from ...models.curvevot import CurveVOT
from ...models.geometry import iou, mask_to_box
from ...models.mask_engine import MaskEngine
from ...models.track import Keyframe
from ...settings import Settings
from . import rle
from .annotations import (keyframes_track, label_id, mask_shapes, one_label, point_scribbles, shape_anchors,
                          shape_type, track_anchors, track_boxes)
from .task_video import TaskVideo

log = logging.getLogger(__name__)


def connect(args: argparse.Namespace) -> Client:
    """A logged-in cvat_sdk Client from --server-host/--server-port/--auth/--profile/--org (or CVAT_ACCESS_TOKEN)."""
    from cvat_sdk.core.auth import ClientAuthParameters, get_auth_factory, make_client_from_cli
    from cvat_sdk.core.exceptions import AuthStoreError

    params = ClientAuthParameters(profile=args.profile, auth=get_auth_factory(args.auth) if args.auth else None,
                                  server_host=args.server_host, server_port=args.server_port,
                                  insecure=args.insecure, organization=args.org)
    try:
        return make_client_from_cli(params)
    except (ApiException, AuthStoreError, urllib3.exceptions.HTTPError) as err:
        where = args.server_host or "the default server"
        raise RuntimeError(f"could not log in to CVAT at {where} ({type(err).__name__}: {err}): "
                           "check --server-host/--server-port and --auth or CVAT_ACCESS_TOKEN") from None


def _delete_request(shapes: Sequence = (), tracks: Sequence = ()) -> models.PatchedLabeledDataRequest:
    """The objects to delete, as CVAT's PATCH ?action=delete takes them (whole objects, matched by id)."""
    return models.PatchedLabeledDataRequest(
        shapes=[models.LabeledShapeRequest(**s.to_dict()) for s in shapes],
        tracks=[models.LabeledTrackRequest(**t.to_dict()) for t in tracks])


@dataclass
class TrackSummary:
    task: int
    label_id: int
    anchors: int
    keyframes: int
    outside: int
    frames: int
    removed: list[int] = field(default_factory=list)


def track_task(client: Any, task_id: int, engine: CurveVOT, label: str | None = None, track_id: int | None = None,
               keep_source: bool = False) -> TrackSummary:
    """Anchors from the task -> Curve-VOT over the whole task -> a new track; the source boxes are removed unless
    `keep_source` (the new track holds them as keyframes)."""
    task = client.tasks.retrieve(task_id)
    data = task.get_annotations()
    if track_id is not None:
        source = [t for t in data.tracks if int(t.id) == track_id]
        if not source or not source[0].shapes or shape_type(source[0].shapes[0]) != "rectangle":
            raise ValueError(f"task {task_id} has no rectangle track with id {track_id}")
        anchors, label_ref, shapes, tracks = track_anchors(source[0]), int(source[0].label_id), [], source
    else:
        rects = [s for s in data.shapes if shape_type(s) == "rectangle"]
        label_ref = label_id(task.get_labels(), label) if label else one_label(rects, "rectangles")
        shapes, tracks = [s for s in rects if int(s.label_id) == label_ref], []
        anchors = shape_anchors(shapes)
    if not anchors:
        raise ValueError(f"task {task_id}: no box to start from: draw the object's rectangle on at least one frame")
    video = TaskVideo(task)
    result = engine.track(video, anchors)
    new = keyframes_track(result.keyframes, label_ref, video.num_frames)
    task.update_annotations(models.PatchedLabeledDataRequest(tracks=[new]), action=AnnotationUpdateAction.CREATE)
    removed = [] if keep_source else [int(o.id) for o in [*shapes, *tracks]]
    if removed:
        task.update_annotations(_delete_request(shapes, tracks), action=AnnotationUpdateAction.DELETE)
    outside = sum(1 for s in new.shapes if s.outside)
    log.info("task %d: %d anchors -> %d keyframes (%d outside) over %d frames", task_id, len(anchors),
             len(new.shapes), outside, video.num_frames)
    return TrackSummary(task_id, label_ref, len(anchors), len(new.shapes), outside, video.num_frames, removed)


@dataclass
class PropagateSummary:
    task: int
    label_id: int
    first: int
    last: int
    approved: list[int]
    written: int
    box_source: str
    replaced: int = 0


def _object_mask(shapes: list, frame: int, label_ref: int | None, width: int, height: int) -> tuple[int, np.ndarray]:
    """The one mask of the object on `frame` (of `label_ref` when given) as (label id, full-frame mask)."""
    found = [s for s in shapes if s.frame == frame and (label_ref is None or int(s.label_id) == label_ref)]
    if len(found) != 1:
        which = "" if label_ref is None else f" of label id {label_ref}"
        hint = "draw the object's mask there" if not found else "name the object's label with --label"
        raise ValueError(f"frame {frame} has {len(found)} masks{which}, expected one: {hint}")
    return int(found[0].label_id), rle.decode(found[0].points, width, height)


def _boxes(data: Any, label_ref: int, video: TaskVideo, total: int, approved: dict[int, np.ndarray],
           engine: CurveVOT) -> tuple[np.ndarray, str]:
    """The object's box on every local frame: from its rectangle track in CVAT (the one that best overlaps the
    approved masks), else tracked by Curve-VOT from the approved masks' boxes."""
    mask_boxes = {f: mask_to_box(m) for f, m in approved.items()}
    best, best_score = None, 0.0
    for track in data.tracks:
        if int(track.label_id) != label_ref or not track.shapes or shape_type(track.shapes[0]) != "rectangle":
            continue
        boxes = track_boxes(track, total)[video.first:video.first + video.num_frames]
        score = float(np.mean([iou(boxes[f], b) for f, b in mask_boxes.items()]))
        if score > best_score:
            best, best_score = (boxes, f"track {track.id}"), score
    if best is None:
        anchors = [Keyframe.of(f, b) for f, b in mask_boxes.items()]
        best = (engine.track(video, anchors).boxes, "curve-vot")
    boxes = best[0].copy()
    for f, b in mask_boxes.items():
        boxes[f] = b  # the approved mask's own box on its frame
    return boxes, best[1]


def propagate_task(client: Any, task_id: int, frame: int, masks_engine: MaskEngine, engine: CurveVOT,
                   label: str | None = None, approved: Sequence[int] = (), first: int | None = None,
                   last: int | None = None, negative_label: str | None = None, replace_previous: bool = False,
                   ) -> PropagateSummary:
    """Masks of one object over [first, last] (task frames, inclusive) from its approved masks and clicks."""
    task = client.tasks.retrieve(task_id)
    data, labels, meta = task.get_annotations(), task.get_labels(), task.get_meta()
    total = int(meta.size)
    first, last = (0 if first is None else first), (total - 1 if last is None else last)
    video = TaskVideo(task, first, last + 1, meta=meta)
    frames = sorted({frame, *approved})
    if any(not first <= f <= last for f in frames):
        raise ValueError(f"approved frames {frames} must lie in the range {first}..{last}")
    masks = [s for s in data.shapes if shape_type(s) == "mask"]
    label_ref = label_id(labels, label) if label else None
    label_ref, mask0 = _object_mask(masks, frame, label_ref, video.width, video.height)
    approved_masks = {frame - first: mask0}
    for f in frames:
        approved_masks[f - first] = _object_mask(masks, f, label_ref, video.width, video.height)[1]
    mine = [s for s in data.shapes if int(s.label_id) == label_ref]
    scribbles = point_scribbles(mine, True, first, last + 1)
    if negative_label:
        negative_ref = label_id(labels, negative_label)
        negative = [s for s in data.shapes if int(s.label_id) == negative_ref]
        scribbles += point_scribbles(negative, False, first, last + 1)
    boxes, box_source = _boxes(data, label_ref, video, total, approved_masks, engine)
    result = masks_engine.run(video, boxes, scribbles, approved=approved_masks)
    out = {f: m for f, m in result.masks.items() if f not in approved_masks}
    old = [s for s in masks if int(s.label_id) == label_ref and first <= s.frame <= last
           and s.frame not in frames and str(getattr(s, "source", "")) == "semi-auto"] if replace_previous else []
    if old:
        task.update_annotations(_delete_request(shapes=old), action=AnnotationUpdateAction.DELETE)
    created = mask_shapes(out, label_ref, offset=first)
    task.update_annotations(models.PatchedLabeledDataRequest(shapes=created), action=AnnotationUpdateAction.CREATE)
    log.info("task %d: %d masks written over frames %d..%d from approved frames %s (boxes: %s)", task_id,
             len(created), first, last, frames, box_source)
    return PropagateSummary(task_id, label_ref, first, last, frames, len(created), box_source, len(old))


def _tracking(settings: Settings, args: argparse.Namespace) -> CurveVOT:
    tracking = settings.tracking
    if getattr(args, "tracker", None):
        tracking = replace(tracking, tracker=args.tracker)
    return CurveVOT.from_settings(tracking)


def cvat_command(settings: Settings, args: argparse.Namespace, client: Any = None) -> int:
    """`scribblebox cvat track|propagate ...`: run one tool on a task and print a JSON summary."""
    if args.cvat_command not in ("track", "propagate"):
        raise ValueError(f"unknown cvat command {args.cvat_command!r}: use track or propagate")
    try:
        approved = [int(v) for v in args.approved.split(",")] if getattr(args, "approved", None) else []
    except ValueError:
        raise ValueError(f"--approved must be frame numbers separated by commas, got {args.approved!r}") from None
    client = client or connect(args)
    try:
        if args.cvat_command == "track":
            summary: Any = track_task(client, args.task, _tracking(settings, args), args.label, args.track_id,
                                      args.keep_source)
        else:
            summary = propagate_task(client, args.task, args.frame, MaskEngine.from_settings(settings.masks),
                                     _tracking(settings, args), args.label, approved, args.first, args.last,
                                     args.negative_label, args.replace)
    except ApiException as err:
        body = err.body.decode(errors="replace") if isinstance(err.body, bytes) else str(err.body or "")
        raise RuntimeError(f"CVAT refused a request for task {args.task}: {err.status} {err.reason} {body[:300]}"
                           ) from None
    sys.stdout.write(json.dumps(summary.__dict__) + "\n")
    return 0
