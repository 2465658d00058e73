"""The Label Studio mask workflow: clicks + saved brush masks + the object's box track -> a mask on every frame.

An object is a label: its box track is the ``videorectangle`` with that label (or our stored track of it), its masks
the ``brushlabels`` with it on the frame image list, its clicks the smart ``keypointlabels`` with it
(``is_positive: false`` = "not the object"; a click without the flag counts as positive).
Page ``item_index`` k of the image list shows video frame ``k * frame_step`` (task data, default 1).

Interactive (`complete`): masks for every frame, returned as ``brushlabels``. Saved masks that differ from every
answer we gave on that frame are the user's corrections: the engine gets them as approved masks.
Webhook jobs (`run_job`): the same on a saved annotation, posted to Label Studio as a new prediction.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import requests

from ...models.masks import MaskResult, Scribble
from ...models.track import render_keyframes
from ..errors import BadRequest
from ..jobs import GiveUp
from ..state import MaskState, RegionState, mask_digest
from .brush import brush_result, decode_mask
from .config import LabelConfig
from .predict import OpenedVideo, Predictor, project_key, region_label
from .regions import REGION_TYPE, region_keyframes

logger = logging.getLogger(__name__)
CLICK_RADIUS_PX = 4.0
SAME_MASK_FRACTION = 0.005  # a saved mask within this share of its area (or SAME_MASK_MIN_PX) of our answer is ours
SAME_MASK_MIN_PX = 16
POST_TIMEOUT_S = (5, 60)


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
    """Result of the most recently updated annotation or draft (what the annotator has now), else []."""
    items = [i for key in ("annotations", "drafts") for i in (task.get(key) or [])
             if isinstance(i, Mapping) and not i.get("was_cancelled")]
    chosen = max(items, key=lambda i: str(i.get("updated_at") or i.get("created_at") or ""), default=None)
    return list(chosen.get("result") or []) if chosen else []


def _same(a: np.ndarray, b: np.ndarray) -> bool:
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
                     or (frame in state.predicted and _same(mask, state.predicted[frame]))))
        if not ours:
            out[frame] = mask
    return out


def _keyframes(region: Mapping, opened: OpenedVideo) -> list:
    try:
        return region_keyframes(region, opened.timeline)
    except ValueError as err:
        raise BadRequest(str(err), detail={"region": region.get("id")}, status=422) from None


def _render(region: Mapping, opened: OpenedVideo) -> np.ndarray:
    """The region's boxes on every video frame, as Label Studio draws them (NaN where the object is absent)."""
    return render_keyframes(_keyframes(region, opened), opened.video.num_frames)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", label)


class MaskPredictor:
    """boxes: the box-track Predictor (store, media, video opening, tracking); engine: a zero-argument callable
    returning the process's MaskEngine."""

    def __init__(self, boxes: Predictor, engine: Callable[[], Any], click_radius: float = CLICK_RADIUS_PX) -> None:
        self.boxes = boxes
        self.engine = engine
        self.click_radius = click_radius

    @property
    def store(self):
        return self.boxes.store

    def wants(self, result: list, config: LabelConfig) -> bool:
        """True when the context holds clicks on a mask image list (else it is a box-track call)."""
        return config.has_masks and any(isinstance(r, Mapping) and r.get("type") == "keypointlabels"
                                        and config.brush_for(str(r.get("to_name"))) for r in result)

    # ---- interactive ------------------------------------------------------------------------------------------
    def complete(self, project: str, task: Mapping, context: list, config: LabelConfig) -> dict:
        """One prediction item: brush masks on every frame for each clicked object (+ its re-tracked box if edited)."""
        task = self.boxes.with_data(task, need_annotations=True)
        saved = newest_result(task)
        clicks = {c.id: c for c in clicks_in(saved, config)}
        clicks.update({c.id: c for c in clicks_in(context, config)})
        labels = list(dict.fromkeys(c.label for c in clicks_in(context, config)))
        if not labels:
            return {"model_version": self.boxes.model_version, "score": 0.0, "result": []}
        frames = frame_list(config, task["data"])
        given = [r for r in context if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]
        stored = [r for r in saved if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]
        out, coverage = [], []
        with self._open(config, task["data"], given + stored, labels) as opened:
            shape = (opened.video.height, opened.video.width)
            saved_by_label = saved_masks(saved, frames, shape)
            for label in labels:
                retracked, boxes = self._boxes(project, str(task["id"]), label, given, stored, opened)
                out += retracked
                state = self._state(project, str(task["id"]), label, opened)
                approved = corrections(self._by_frame(saved_by_label.get(label, {}), frames, opened), state)
                scribbles = self._scribbles([c for c in clicks.values() if c.label == label], frames, opened)
                masks = self._propagate(label, opened, boxes, scribbles, approved, state)
                self.store.put_masks(project, str(task["id"]), label, self._next_state(opened, state, approved, masks))
                out += self._results(label, masks, frames, opened)
                coverage.append(self._coverage(masks, boxes))
        return {"model_version": self.boxes.model_version, "score": round(float(np.mean(coverage)), 4), "result": out}

    # ---- webhook jobs -----------------------------------------------------------------------------------------
    @staticmethod
    def is_mask_payload(payload: Mapping) -> bool:
        annotation = payload.get("annotation")
        result = annotation.get("result") if isinstance(annotation, Mapping) else None
        return isinstance(result, list) and any(isinstance(r, Mapping) and r.get("type") == "brushlabels" for r in result)

    @staticmethod
    def job_payload(payload: Mapping) -> tuple[str, str, dict]:
        """(project, task id, what the job needs) from an ANNOTATION_* webhook: small enough to store."""
        annotation = payload["annotation"]
        task = payload.get("task") if isinstance(payload.get("task"), Mapping) else {"id": annotation.get("task")}
        project = payload.get("project") or task.get("project") or annotation.get("project")
        xml = project.get("label_config") if isinstance(project, Mapping) else None
        task_id = task.get("id") or annotation.get("task")
        if task_id is None:
            raise BadRequest("webhook annotation has no task id", detail={"keys": sorted(payload)})
        data = task.get("data") if isinstance(task.get("data"), Mapping) else None
        return project_key(project), str(task_id), {"task": {"id": task_id, "data": data}, "label_config": xml,
                                                    "annotation": {"id": annotation.get("id"), "result": annotation["result"]}}

    def run_job(self, project: str, task_id: str, payload: Mapping) -> dict | None:
        """Re-propagate the objects whose saved masks hold new corrections, post the prediction; returns it (or None)."""
        try:
            item, states = self.refit(project, payload)
        except BadRequest as err:
            if err.status >= 500:
                raise
            raise GiveUp(f"{err.message} ({err.detail!r})") from None
        if item is None:
            logger.info("task %s: no new mask corrections, nothing to post", task_id)
            return None
        self.post(int(payload["task"]["id"]), item)
        for label, state in states.items():  # stored once posted: a failed post is recomputed on retry
            self.store.put_masks(project, task_id, label, state)
        return item

    def refit(self, project: str, payload: Mapping) -> tuple[dict | None, dict[str, MaskState]]:
        """The prediction for a saved annotation (None when no object has new corrections) and the states to store."""
        config = self.boxes.label_config(payload.get("label_config"), project)
        if not config.has_masks:
            return None, {}
        task = self.boxes.with_data({k: v for k, v in payload["task"].items() if v is not None})
        task_id = str(task["id"])
        result = list(payload["annotation"]["result"])
        frames = frame_list(config, task["data"])
        stored = [r for r in result if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]
        clicks = clicks_in(result, config)
        states, new_results, coverage = {}, [], []
        with self._open(config, task["data"], stored, []) as opened:
            for label, by_item in saved_masks(result, frames, (opened.video.height, opened.video.width)).items():
                state = self._state(project, task_id, label, opened)
                approved = corrections(self._by_frame(by_item, frames, opened), state)
                if not approved or (state is not None and approved.keys() == state.approved.keys()
                                    and all(_same(m, state.approved[f]) for f, m in approved.items())):
                    continue  # nothing the user changed since our last answer
                _, boxes = self._boxes(project, task_id, label, [], stored, opened)
                scribbles = self._scribbles([c for c in clicks if c.label == label], frames, opened)
                masks = self._propagate(label, opened, boxes, scribbles, approved, state)
                states[label] = self._next_state(opened, state, approved, masks)
                new_results += self._results(label, masks, frames, opened)
                coverage.append(self._coverage(masks, boxes))
        if not states:
            return None, {}
        kept = [r for r in result if not (isinstance(r, Mapping) and r.get("type") == "brushlabels" and region_label(r) in states)]
        item = {"model_version": self.boxes.model_version, "score": round(float(np.mean(coverage)), 4), "result": kept + new_results}
        logger.info("task %s: re-propagated %s from corrections", task_id, sorted(states))
        return item, states

    def post(self, task_id: int, item: Mapping) -> None:
        """POST /api/predictions with the backend's Label Studio key; RuntimeError (retried by the job) on failure."""
        session = self.boxes.media.session
        if session is None:
            raise RuntimeError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so the backend can post predictions")
        body = {"task": task_id, "result": item["result"], "model_version": item["model_version"], "score": item["score"]}
        url = session.url + "api/predictions"
        try:
            resp = session.http.post(url, json=body, headers=session._headers(), timeout=POST_TIMEOUT_S)
            if resp.status_code == 401 and session.uses_pat:
                resp = session.http.post(url, json=body, headers=session._headers(renew=True), timeout=POST_TIMEOUT_S)
        except requests.RequestException as err:
            raise RuntimeError(f"cannot reach Label Studio to post the prediction: {err}") from None
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"Label Studio answered {resp.status_code} to the prediction: {resp.text[:500]}")
        logger.info("task %s: posted a prediction with %d results", task_id, len(body["result"]))

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _open(self, config: LabelConfig, data: Mapping, regions: list[dict], labels: list[str]):
        """The video the objects' box tracks are on (a matching region's Video tag, else the config's only one)."""
        named = [r for r in regions if region_label(r) in labels] or regions
        to_name = str(named[0].get("to_name") or "") if named else ""
        if not to_name and len(config.videos) == 1:
            to_name = next(iter(config.videos))
        return self.boxes.open_video(config, to_name, data, [r for r in regions if str(r.get("to_name") or "") == to_name])

    def _boxes(self, project: str, task_id: str, label: str, given: list[dict], stored: list[dict],
               opened: OpenedVideo) -> tuple[list[dict], np.ndarray]:
        """The object's boxes per video frame: its region in the context (re-tracked when edited, returned then),
        else in the saved annotation, else our stored track of it."""
        n = opened.video.num_frames
        for region in given:
            if region_label(region) == label:
                if self._edited(project, task_id, region, opened):
                    region, _, _ = self.boxes.track_region(project, task_id, region, opened)
                    return [region], _render(region, opened)
                return [], _render(region, opened)
        for region in stored:
            if region_label(region) == label:
                return [], _render(region, opened)
        for state in self.store.list_task(project, task_id).values():
            if state.label == label and state.video_key == opened.key and state.answered:
                return [], render_keyframes(state.answered, n)
        raise BadRequest(f"no box track labelled {label!r}: draw a box on the video with the same label first", status=422)

    def _edited(self, project: str, task_id: str, region: Mapping, opened: OpenedVideo) -> bool:
        state: RegionState | None = self.store.get(project, task_id, str(region.get("id")))
        if state is None or state.video_key != opened.key:
            return True
        given = _keyframes(region, opened)
        return len(given) != len(state.answered) or not all(any(k.same_as(a) for a in state.answered) for k in given)

    def _state(self, project: str, task_id: str, label: str, opened: OpenedVideo) -> MaskState | None:
        state = self.store.get_masks(project, task_id, label)
        if state is None or state.video_key != opened.key or state.shape != (opened.video.height, opened.video.width):
            return None  # made on another video: start afresh
        return state

    @staticmethod
    def _by_frame(by_item: Mapping[int, np.ndarray], frames: FrameList, opened: OpenedVideo) -> dict[int, np.ndarray]:
        return {frames.frame(item, opened.video.num_frames): mask for item, mask in by_item.items()}

    def _scribbles(self, clicks: list[Click], frames: FrameList, opened: OpenedVideo) -> list[Scribble]:
        w, h = opened.video.width, opened.video.height
        return [Scribble(frames.frame(c.item, opened.video.num_frames), np.array([[c.x * w / 100.0, c.y * h / 100.0]]),
                         c.positive, self.click_radius) for c in clicks]

    def _propagate(self, label: str, opened: OpenedVideo, boxes: np.ndarray, scribbles: list[Scribble],
                   approved: dict[int, np.ndarray], state: MaskState | None) -> dict[int, np.ndarray]:
        previous = MaskResult(dict(state.predicted), dict(state.approved)) if state is not None else None
        try:
            result = self.engine().run(opened.video, boxes, scribbles, previous, approved=approved)
        except ValueError as err:
            raise BadRequest(f"object {label!r}: {err}", status=422) from None
        logger.info("object %r: %d clicks, %d corrected frames -> %d masks in %.1f s", label, len(scribbles),
                    len(approved), len(result.masks), result.seconds)
        return {**result.masks, **approved}  # the user's corrections are answered back unchanged

    @staticmethod
    def _next_state(opened: OpenedVideo, state: MaskState | None, approved: dict[int, np.ndarray],
                    masks: dict[int, np.ndarray]) -> MaskState:
        new = MaskState(opened.key, (opened.video.height, opened.video.width), approved=dict(approved),
                        seen=dict(state.seen) if state is not None else {})
        new.remember(masks)
        return new

    @staticmethod
    def _results(label: str, masks: Mapping[int, np.ndarray], frames: FrameList, opened: OpenedVideo) -> list[dict]:
        """brushlabels for every page whose frame has a non-empty mask; stable ids, so a new answer replaces the last."""
        return [brush_result(masks[frame], item, label, frames.brush, frames.image, f"sb-{_slug(label)}-{item}")
                for item, frame in frames.items(opened.video.num_frames) if frame in masks and masks[frame].any()]

    @staticmethod
    def _coverage(masks: Mapping[int, np.ndarray], boxes: np.ndarray) -> float:
        """Share of the frames with a box that got a non-empty mask: the item's score."""
        boxed = np.flatnonzero(~np.isnan(boxes[:, 0]))
        return float(np.mean([f in masks and bool(masks[f].any()) for f in boxed])) if len(boxed) else 0.0
