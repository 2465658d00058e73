"""The Label Studio mask workflow: clicks + saved brush masks + the object's box track -> a mask on every frame.

An object is a label: its box track is the ``videorectangle`` with that label (or our stored track of it), its masks
the ``brushlabels`` with it on the frame image list, its clicks the smart ``keypointlabels`` with it
(``is_positive: false`` = "not the object"; a click without the flag counts as positive).
Page ``item_index`` k of the image list shows video frame ``k * frame_step`` (task data, default 1).

Interactive (`complete`): masks for every frame, returned as ``brushlabels``. Saved masks that differ from every
answer we gave on that frame are the user's corrections: the engine gets them as approved masks.
Webhook jobs (`run_job`): the same on a saved annotation, posted to Label Studio as a new prediction.
Batch predict (`batch`): the saved objects that have clicks or brush masks. Long videos: a window around the
clicked frames now, every frame in the task's `complete` job (see `long_video`).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ...models.masks import MaskResult, Scribble
from ...models.progress import Progress, scaled
from ...models.track import render_keyframes
from ..errors import BadRequest
from ..jobs import GiveUp
from ..state import MaskState, RegionState
from .brush import brush_result
from .config import LabelConfig
from .long_video import LongWork
from .mask_inputs import Click, FrameList, clicks_in, corrections, frame_list, newest_result, same_mask, saved_masks
from .posting import post_prediction
from .predict import OpenedVideo, Predictor, project_key, region_label
from .regions import REGION_TYPE, region_keyframes

logger = logging.getLogger(__name__)
CLICK_RADIUS_PX = 4.0


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


def remembered_clicks(state: MaskState | None, label: str, found: Iterable[Click]) -> list[Click]:
    """The object's clicks: those of earlier calls (kept in its state) and those found now, each id once.
    Label Studio deletes the smart keypoints when the user accepts the suggested masks; forgetting them would drop
    the frames they fixed from the next answer's start frames."""
    by_id = {str(c[0]): Click(str(c[0]), label, int(c[1]), float(c[2]), float(c[3]), bool(c[4]))
             for c in (state.clicks if state is not None else [])}
    by_id.update({c.id: c for c in found if c.label == label})
    return list(by_id.values())


class MaskPredictor:
    """boxes: the box-track Predictor (store, media, video opening, tracking); engine: a zero-argument callable
    returning the process's MaskEngine."""

    def __init__(self, boxes: Predictor, engine: Callable[[], Any], click_radius: float = CLICK_RADIUS_PX) -> None:
        self.boxes = boxes
        self.engine = engine  # engine(project): the project's mask engine (its fine-tuned checkpoint, if any)
        self.registry: Any = None  # a models_registry.ModelRegistry: per-project model versions
        self.click_radius = click_radius

    @property
    def store(self):
        return self.boxes.store

    def wants(self, result: list, config: LabelConfig) -> bool:
        """True when the context holds clicks on a mask image list (else it is a box-track call)."""
        return config.has_masks and any(isinstance(r, Mapping) and r.get("type") == "keypointlabels"
                                        and config.brush_for(str(r.get("to_name"))) for r in result)

    # ---- interactive ------------------------------------------------------------------------------------------
    def complete(self, project: str, task: Mapping, context: list, config: LabelConfig, work: LongWork | None = None) -> dict:
        """One prediction item: brush masks on every frame for each clicked object (+ its re-tracked box if edited)."""
        task = self.boxes.with_data(task, need_annotations=True)
        labels = list(dict.fromkeys(c.label for c in clicks_in(context, config)))
        return self.objects(project, task, context, labels, config, work)

    def batch(self, project: str, task: Mapping, config: LabelConfig, regions: list[dict],
              work: LongWork | None = None) -> dict | None:
        """Batch predict: masks of the saved objects that have clicks or brush masks and a box track (`regions`: the
        box tracks just answered for the task). None when there is no such object."""
        saved = newest_result(task)
        try:
            frames = frame_list(config, task["data"])
        except BadRequest as err:
            logger.info("task %s: no masks in batch predict (%s)", task.get("id"), err.message)
            return None
        marked = [c.label for c in clicks_in(saved, config)] + [
            region_label(r) for r in saved if isinstance(r, Mapping) and r.get("type") == "brushlabels"
            and r.get("to_name") == frames.image]
        boxed = {region_label(r) for r in regions} | {
            s.label for s in self.store.list_task(project, str(task["id"])).values() if s.answered}
        labels = [label for label in dict.fromkeys(marked) if label is not None and label in boxed]
        if not labels:
            return None
        context = list(regions) + [r for r in saved if isinstance(r, Mapping) and r.get("type") == "keypointlabels"]
        return self.objects(project, task, context, labels, config, work)

    def objects(self, project: str, task: Mapping, context: list, labels: list[str], config: LabelConfig,
                work: LongWork | None = None, progress: Progress | None = None) -> dict:
        """Brush masks of every frame for `labels` (+ the context's edited box regions, re-tracked). On a long
        video with `work`: the frames around the context's clicks now, every frame in the `complete` job."""
        if not labels:
            return {"model_version": self.model_version(project), "score": 0.0, "result": []}
        saved = newest_result(task)
        clicks = {c.id: c for c in clicks_in(saved, config)}
        clicks.update({c.id: c for c in clicks_in(context, config)})
        frames = frame_list(config, task["data"])
        given = [r for r in context if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]
        stored = [r for r in saved if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]
        out, coverage = [], []
        if work is not None:
            work.bind(task)
        with self._open(config, task["data"], given + stored, labels) as opened:
            shape = (opened.video.height, opened.video.width)
            saved_by_label = saved_masks(saved, frames, shape)
            long = work is not None and work.is_long(opened.video)
            if long:
                work.add_masks(context, labels)
                for region in given:
                    work.add_region(region)
            for i, label in enumerate(labels):
                retracked, boxes = self._boxes(project, str(task["id"]), label, given, stored, opened, work)
                out += retracked
                state = self._state(project, str(task["id"]), label, opened)
                approved = corrections(self._by_frame(saved_by_label.get(label, {}), frames, opened), state)
                object_clicks = remembered_clicks(state, label, clicks.values())
                scribbles = self._scribbles(object_clicks, frames, opened)
                if long:
                    focus = [s.frame for s in self._scribbles([c for c in clicks_in(context, config) if c.label == label],
                                                              frames, opened)] or sorted(approved) or _boxed(boxes)[:1]
                    masks = self._window(project, work, label, opened, boxes, scribbles, approved, state, focus)
                    if masks is None:
                        continue  # missed the deadline: the job answers this object
                else:
                    masks = self._propagate(project, label, opened, boxes, scribbles, approved, state,
                                            scaled(progress, i / len(labels), (i + 1) / len(labels)))
                kept = {**state.predicted, **masks} if long and state is not None else masks
                self.store.put_masks(project, str(task["id"]), label,
                                     self._next_state(opened, state, approved, kept, object_clicks))
                out += self._results(label, masks, frames, opened)
                coverage.append(self._coverage(masks, boxes, masks if long else None))
        score = round(float(np.mean(coverage)), 4) if coverage else 0.0
        return {"model_version": self.model_version(project), "score": score, "result": out}

    def model_version(self, project: str) -> str:
        """The project's fine-tuned version when it has one (`fit`), else the backend's."""
        base = self.boxes.model_version
        return self.registry.model_version(project, base) if self.registry is not None else base

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

    def run_job(self, project: str, task_id: str, payload: Mapping, progress: Progress | None = None) -> dict | None:
        """Re-propagate the objects whose saved masks hold new corrections, post the prediction; returns it (or None)."""
        try:
            item, states = self.refit(project, payload, progress)
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

    def refit(self, project: str, payload: Mapping, progress: Progress | None = None) -> tuple[dict | None, dict[str, MaskState]]:
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
                                    and all(same_mask(m, state.approved[f]) for f, m in approved.items())):
                    continue  # nothing the user changed since our last answer
                _, boxes = self._boxes(project, task_id, label, [], stored, opened)
                object_clicks = remembered_clicks(state, label, clicks)
                scribbles = self._scribbles(object_clicks, frames, opened)
                masks = self._propagate(project, label, opened, boxes, scribbles, approved, state, progress)
                states[label] = self._next_state(opened, state, approved, masks, object_clicks)
                new_results += self._results(label, masks, frames, opened)
                coverage.append(self._coverage(masks, boxes))
        if not states:
            return None, {}
        kept = [r for r in result if not (isinstance(r, Mapping) and r.get("type") == "brushlabels" and region_label(r) in states)]
        item = {"model_version": self.model_version(project), "score": round(float(np.mean(coverage)), 4),
                "result": kept + new_results}
        logger.info("task %s: re-propagated %s from corrections", task_id, sorted(states))
        return item, states

    def post(self, task_id: int, item: Mapping) -> None:
        """The prediction to Label Studio, once (`posting.post_prediction`); RuntimeError (retried by the job) on failure."""
        post_prediction(self.boxes.media.session, task_id, item)

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _open(self, config: LabelConfig, data: Mapping, regions: list[dict], labels: list[str]):
        """The video the objects' box tracks are on (a matching region's Video tag, else the config's only one)."""
        named = [r for r in regions if region_label(r) in labels] or regions
        to_name = str(named[0].get("to_name") or "") if named else ""
        if not to_name and len(config.videos) == 1:
            to_name = next(iter(config.videos))
        return self.boxes.open_video(config, to_name, data, [r for r in regions if str(r.get("to_name") or "") == to_name])

    def _boxes(self, project: str, task_id: str, label: str, given: list[dict], stored: list[dict],
               opened: OpenedVideo, work: LongWork | None = None) -> tuple[list[dict], np.ndarray]:
        """The object's boxes per video frame: its region in the context (re-tracked when edited, returned then),
        else in the saved annotation, else our stored track of it."""
        n = opened.video.num_frames
        for region in given:
            if region_label(region) == label:
                if self._edited(project, task_id, region, opened):
                    region, _, _ = self.boxes.track_region(project, task_id, region, opened, work)
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

    def _propagate(self, project: str, label: str, opened: OpenedVideo, boxes: np.ndarray, scribbles: list[Scribble],
                   approved: dict[int, np.ndarray], state: MaskState | None,
                   progress: Progress | None = None) -> dict[int, np.ndarray]:
        previous = MaskResult(dict(state.predicted), dict(state.approved)) if state is not None else None
        kwargs = {"progress": progress} if progress is not None else {}
        try:
            result = self.engine(project).run(opened.video, boxes, scribbles, previous, approved=approved, **kwargs)
        except ValueError as err:
            raise BadRequest(f"object {label!r}: {err}", status=422) from None
        logger.info("object %r: %d clicks, %d corrected frames -> %d masks in %.1f s", label, len(scribbles),
                    len(approved), len(result.masks), result.seconds)
        return {**result.masks, **approved}  # the user's corrections are answered back unchanged

    def _window(self, project: str, work: LongWork, label: str, opened: OpenedVideo, boxes: np.ndarray, scribbles: list[Scribble],
                approved: dict[int, np.ndarray], state: MaskState | None, focus: list[int]) -> dict[int, np.ndarray] | None:
        """`_propagate` on the window around `focus` (None when it missed the deadline): its masks and corrections."""
        previous = MaskResult(dict(state.predicted), dict(state.approved)) if state is not None else None
        try:
            result = work.masks_window(self.engine(project), opened.video, boxes, scribbles, previous, approved, focus, label)
        except ValueError as err:
            raise BadRequest(f"object {label!r}: {err}", status=422) from None
        if result is None:
            return None
        inside = {f: m for f, m in approved.items() if f in result.masks or f in result.approved}
        return {**result.masks, **inside}

    @staticmethod
    def _next_state(opened: OpenedVideo, state: MaskState | None, approved: dict[int, np.ndarray],
                    masks: dict[int, np.ndarray], clicks: list[Click]) -> MaskState:
        new = MaskState(opened.key, (opened.video.height, opened.video.width), approved=dict(approved),
                        seen=dict(state.seen) if state is not None else {},
                        clicks=[[c.id, c.item, c.x, c.y, c.positive] for c in clicks])
        new.remember(masks)
        return new

    @staticmethod
    def _results(label: str, masks: Mapping[int, np.ndarray], frames: FrameList, opened: OpenedVideo) -> list[dict]:
        """brushlabels for every page whose frame has a non-empty mask; stable ids, so a new answer replaces the last."""
        return [brush_result(masks[frame], item, label, frames.brush, frames.image, f"sb-{_slug(label)}-{item}")
                for item, frame in frames.items(opened.video.num_frames) if frame in masks and masks[frame].any()]

    @staticmethod
    def _coverage(masks: Mapping[int, np.ndarray], boxes: np.ndarray, within: Mapping | None = None) -> float:
        """Share of the frames with a box (within the span of `within`'s frames, if given) that got a non-empty
        mask: the item's score."""
        boxed = _boxed(boxes)
        if within:
            boxed = [f for f in boxed if min(within) <= f <= max(within)]
        return float(np.mean([f in masks and bool(masks[f].any()) for f in boxed])) if len(boxed) else 0.0


def _boxed(boxes: np.ndarray) -> list[int]:
    return [int(f) for f in np.flatnonzero(~np.isnan(boxes[:, 0]))]
