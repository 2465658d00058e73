"""Label Studio /predict and annotation webhooks -> Curve-VOT calls -> ``videorectangle`` results (the only engine caller).

Interactive (``params.context.result``): each region's new or moved keyframes become anchors; the answer replaces the
region in the UI (same id). Batch (context null): every region of the task's latest annotation or draft is completed.
Clicks on a frame image list (smart KeyPointLabels, mask configs) go to `masks.MaskPredictor` instead.
Videos longer than `server.window_frames`: a window now, the rest as a background job (see `long_video`).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...models.progress import Progress
from ...models.track import Keyframe, TrackResult
from ..errors import BadRequest
from ..jobs import Job
from ..media import MediaResolver
from ..state import RegionState, TrackStore, merge_anchors
from .config import LabelConfig, VideoTag, parse_label_config
from .long_video import Deadline, LongWork, complete_job, finish
from .regions import REGION_TYPE, Timeline, keyframes_region, region_keyframes

logger = logging.getLogger(__name__)
FPS_TOLERANCE = 0.01


@dataclass
class OpenedVideo:
    key: str  # the task's video reference: state made on another video is ignored
    video: Any  # scribblebox.models.video.Video
    timeline: Timeline
    warnings: list[str] = field(default_factory=list)


def project_key(project: Any) -> str:
    """LS sends "1.1712345678" to /predict and /setup, {"id": 1, ...} in webhooks: both are project "1"."""
    if isinstance(project, Mapping):
        project = project.get("id")
    return str(project).split(".")[0] if project not in (None, "") else "0"


def _video_regions(result: Any) -> list[dict]:
    if not isinstance(result, list):  # payloads are any JSON: a non-list holds no regions
        return []
    return [r for r in result if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]


def region_label(region: Mapping) -> str | None:
    """The first label of a region (any ``*labels`` key of its value): how box tracks and masks find their object."""
    value = region.get("value") if isinstance(region.get("value"), Mapping) else {}
    for key, labels in value.items():
        if key.endswith("labels") and isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def _default_opener(path: Path):
    from ...models.video import open_video

    return open_video(path)


class Predictor:
    """engine: a zero-argument callable returning the process's engine (built once, on first use)."""

    def __init__(self, engine: Callable[[], Any], store: TrackStore, media: MediaResolver, model_version: str,
                 default_fps: float = 24.0, opener: Callable[[Path], Any] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.media = media
        self.model_version = model_version
        self.default_fps = default_fps
        self.opener = opener or _default_opener
        self.masks: Any = None  # a masks.MaskPredictor when the server serves mask configs
        self.window_frames = 0  # 0: every video is answered whole (see configure_long_videos)
        self.deadline_s = 40.0
        self.enqueue: Callable[..., int] | None = None  # Backend.enqueue(kind, project, key, payload)

    def configure_long_videos(self, server: Any, enqueue: Callable[..., int]) -> None:
        """Windows on videos longer than `server.window_frames`, answered within `server.predict_deadline_s`;
        the rest goes to `complete` jobs queued with `enqueue`."""
        self.window_frames, self.deadline_s, self.enqueue = int(server.window_frames), float(server.predict_deadline_s), enqueue

    def run_complete(self, job: Job, progress: Progress) -> None:
        """Handler of the `complete` job kind."""
        complete_job(self, job, progress)

    # ---- requests -------------------------------------------------------------------------------------------
    def predict(self, body: Mapping) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, Mapping) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects", detail={"got": type(tasks).__name__})
        project = project_key(body.get("project"))
        params = body.get("params") or {}
        if not isinstance(params, Mapping):
            raise BadRequest("'params' must be an object", detail={"got": type(params).__name__})
        context = params.get("context")
        if context is not None and not (isinstance(context, Mapping) and isinstance(context.get("result"), list)):
            raise BadRequest("'params.context' must be null or an object with a 'result' list", detail={"context": context})
        config = self.label_config(body.get("label_config"), project) if tasks else None
        deadline = Deadline(self.deadline_s)  # one for the whole call: Label Studio times the call, not each task

        def answer(compute: Callable[[LongWork], Any]) -> Any:
            work = LongWork(project, body.get("label_config"), self.window_frames, deadline)
            return finish(work, compute(work), self.enqueue, self.media.session is not None)

        if context is not None and self.masks is not None and config is not None and self.masks.wants(context["result"], config):
            return {"results": [answer(lambda w, t=task: self.masks.complete(project, t, context["result"], config, w))
                                for task in tasks]}
        if context is not None:
            regions = _video_regions(context["result"])
            return {"results": [answer(lambda w, t=task: self._complete(project, t, regions, config, w)) for task in tasks]}
        return {"results": [answer(lambda w, t=task: self._batch_item(project, t, config, len(tasks) == 1, w))
                            for task in tasks]}

    def record_annotation(self, payload: Mapping) -> int:
        """ANNOTATION_CREATED/UPDATED: the submitted keyframes become the user's anchors. Returns regions recorded."""
        annotation = payload.get("annotation") or {}
        if not isinstance(annotation, Mapping):  # webhook bodies are any JSON: refuse, never crash the recorder
            raise BadRequest("webhook 'annotation' must be an object", detail={"got": type(annotation).__name__})
        regions = _video_regions(annotation.get("result"))
        if not regions:
            return 0
        task = payload.get("task") if isinstance(payload.get("task"), Mapping) else {"id": annotation.get("task")}
        project = payload.get("project") or task.get("project") or annotation.get("project")
        key = project_key(project)
        xml = project.get("label_config") if isinstance(project, Mapping) else None
        task = self.with_data(task)
        config = self.label_config(xml, key)
        for to_name, group in self.by_video(regions).items():
            with self.open_video(config, to_name, task["data"], group) as opened:
                for region in group:
                    rid = str(region.get("id"))
                    given = self._keyframes(region, opened)
                    old = self.store.get(key, str(task["id"]), rid)
                    result = old.result if old is not None and old.video_key == opened.key else {}
                    self.store.put(key, str(task["id"]), rid, RegionState(opened.key, given, given, result, region_label(region)))
        return len(regions)

    # ---- pieces ---------------------------------------------------------------------------------------------
    def label_config(self, xml: Any, project: str) -> LabelConfig:
        xml = xml or self.store.get_label_config(project)
        try:
            return parse_label_config(xml)
        except ValueError as err:
            raise BadRequest(str(err), detail={"project": project}) from None

    def with_data(self, task: Mapping, need_annotations: bool = False) -> Mapping:
        """The task itself, or as Label Studio has it (GET /api/tasks/{id}) when the payload lacks what we need."""
        lacks = not isinstance(task.get("data"), Mapping) or (need_annotations and "annotations" not in task and "drafts" not in task)
        session = self.media.session
        if lacks and task.get("id") is not None and session is not None:
            try:
                return {**session.get_json(f"/api/tasks/{int(task['id'])}"), **{k: v for k, v in task.items() if v is not None}}
            except (BadRequest, ValueError) as err:
                logger.warning("could not fetch task %s from Label Studio: %s", task.get("id"), err)
        if not isinstance(task.get("data"), Mapping) or task.get("id") is None:
            raise BadRequest("task must have an 'id' and a 'data' object", detail={"keys": sorted(task)})
        return task

    @staticmethod
    def by_video(regions: list[dict]) -> dict[str, list[dict]]:
        groups: dict[str, list[dict]] = {}
        for region in regions:
            groups.setdefault(str(region.get("to_name") or ""), []).append(region)
        return groups

    @contextmanager
    def open_video(self, config: LabelConfig, to_name: str, data: Mapping, regions: list[dict]) -> Iterator[OpenedVideo]:
        """The video the regions point at, with its LS timeline, closed (file handles released) when the block ends."""
        try:
            tag = config.video_for(to_name)
        except ValueError as err:
            raise BadRequest(str(err), detail={"to_name": to_name}) from None
        opened = self._load(tag, data, regions)
        try:
            yield opened
        finally:
            close = getattr(opened.video, "close", None)
            if close is not None:
                close()

    def _load(self, tag: VideoTag, data: Mapping, regions: list[dict]) -> OpenedVideo:
        try:
            ref = tag.url(data)
            fps = tag.fps(data, self.default_fps)
        except ValueError as err:
            raise BadRequest(str(err), detail={"video_tag": tag.name}) from None
        path = self.media.resolve(ref)
        try:
            video = self.opener(path)
        except Exception as err:  # decoders raise many types (PyAV, OSError, ValueError): all mean "not a video we can read"
            reason = f"{type(err).__name__}: {err}"
            raise BadRequest("cannot decode the video", detail={"url": ref, "reason": reason}, status=422) from None
        warnings = []
        if getattr(video, "variable_frame_rate", False):
            warnings.append(f"{ref}: variable frame rate video; Label Studio frames are mapped by time at {fps:g} fps, "
                            "re-encode it at a constant frame rate for exact frames")
        elif video.fps > 0 and abs(fps - video.fps) > FPS_TOLERANCE * video.fps:
            warnings.append(f"{ref}: labeling config frame rate {fps:g} differs from the video's {video.fps:.3f} fps; "
                            "set <Video frameRate> (or the task's fps) to the video's rate")
        for text in warnings:
            logger.warning("%s", text)
        counts = [int(r["value"]["framesCount"]) for r in regions
                  if isinstance(r.get("value"), Mapping) and isinstance(r["value"].get("framesCount"), (int, float))]
        native = video.fps if video.fps > 0 else fps
        frames_count = max([int(round(video.num_frames * fps / native)), 1] + counts)
        index_at_time = getattr(video, "index_at_time", None) or (lambda t: int(math.floor(t * native + 1e-6)))
        timeline = Timeline.build(video.width, video.height, fps, frames_count, video.num_frames, index_at_time)
        return OpenedVideo(ref, video, timeline, warnings)

    @staticmethod
    def _keyframes(region: Mapping, opened: OpenedVideo):
        try:
            return region_keyframes(region, opened.timeline)
        except ValueError as err:
            raise BadRequest(str(err), detail={"region": region.get("id")}, status=422) from None

    def track_region(self, project: str, task_id: str, region: Mapping, opened: OpenedVideo, work: LongWork | None = None,
                     anchors: list[Keyframe] | None = None, progress: Progress | None = None) -> tuple[dict, float, list[str]]:
        """The region re-tracked from its anchors: merged from its keyframes and our last answer, or given (a job
        finishing a windowed answer). With `work` on a long video, only a window around the edit is tracked."""
        rid = region.get("id")
        if not rid:
            raise BadRequest("a videorectangle region has no 'id'", detail={"region": region})
        given = self._keyframes(region, opened)
        if not given:
            return dict(region), 0.0, []
        state = self.store.get(project, task_id, str(rid))
        state = state if state is not None and state.video_key == opened.key else None
        from_job = anchors is not None
        anchors = anchors if from_job else merge_anchors(given, state)
        windowed = work is not None and work.is_long(opened.video)
        start = time.perf_counter()
        try:
            if windowed:
                keyframes, score, warnings = work.track_window(self.engine(), opened.video, given, anchors,
                                                               state.answered if state is not None else [], str(rid))
                stored = state.result if state is not None else {}  # the whole track's segments: the job reuses them
            else:
                previous = TrackResult.from_dict(state.result) if state is not None and state.result else None
                kwargs = {"progress": progress} if progress is not None else {}
                result = self.engine().track(opened.video, anchors, previous, **kwargs)
                scores = np.asarray(result.scores, dtype=np.float64)
                keyframes, warnings, stored = result.keyframes, list(result.warnings), result.to_dict()
                score = float(np.nanmean(scores)) if np.isfinite(scores).any() else 0.0
        except ValueError as err:
            raise BadRequest(f"cannot track region {rid}: {err}", detail={"region": rid}, status=422) from None
        ls_frames = {opened.timeline.video_frame(item["frame"]): item["frame"] for item in region["value"]["sequence"]}
        out = keyframes_region(region, keyframes, opened.timeline, ls_frames, round(score, 4)) if keyframes is not None else dict(region)
        answered = region_keyframes(out, opened.timeline)
        if from_job and state is not None:  # the UI may show the windowed answer or this one: both are ours
            answered += [k for k in state.answered if not any(k.same_as(a) for a in answered)]
        if not from_job or state is None or _same_keyframes(state.anchors, anchors):  # else a newer call owns the state
            self.store.put(project, task_id, str(rid), RegionState(opened.key, anchors, answered, stored, region_label(region)))
        if work is not None:
            work.add_region(region if windowed else out, anchors if windowed else None)
        logger.info("task %s region %s: %d anchors -> %d keyframes (score %.3f) in %.1f s", task_id, rid, len(anchors),
                    len(answered), score, time.perf_counter() - start)
        return out, score, warnings

    def version(self, project: str) -> str:
        """The model version of the project's predictions: its fine-tuned one (`fit`) when it has one. Label Studio's
        "Retrieve predictions" skips tasks holding a prediction of the version /setup reported: they must agree."""
        return self.masks.model_version(project) if self.masks is not None else self.model_version

    def _complete(self, project: str, task: Mapping, regions: list[dict], config: LabelConfig,
                  work: LongWork | None = None) -> dict:
        """One prediction item: every region tracked, in the order given."""
        if not regions:
            return {"model_version": self.version(project), "score": 0.0, "result": []}
        task = self.with_data(task)
        if work is not None:
            work.bind(task)
        outs, scores, warnings = {}, [], []
        for to_name, group in self.by_video(regions).items():
            with self.open_video(config, to_name, task["data"], group) as opened:
                warnings += opened.warnings
                for region in group:
                    out, score, more = self.track_region(project, str(task["id"]), region, opened, work)
                    outs[id(region)] = out
                    scores.append(score)
                    warnings += more
        item = {"model_version": self.version(project), "score": round(float(np.mean(scores)), 4),
                "result": [outs[id(r)] for r in regions]}
        if warnings:
            item["warnings"] = warnings
        return item

    def _batch_item(self, project: str, task: Mapping, config: LabelConfig, raise_errors: bool,
                    work: LongWork | None = None) -> dict | list:
        """Complete the latest annotation (else draft); on a mask config, also the masks of its objects that have
        clicks or brush masks (`masks.MaskPredictor.batch`).

        A task with nothing to start from gets `[]` (no prediction): Label Studio stores nothing then, whereas an
        empty prediction would make "Retrieve predictions" skip the task once the annotator has drawn a box.
        A failing task in a batch of several gets `[]` too, and the refusal is logged.
        """
        try:
            task = self.with_data(task, need_annotations=True)
            regions = _video_regions(_latest_result(task))
            item = self._complete(project, task, regions, config, work) if regions else None
            if self.masks is not None and config.has_masks:
                masks = self.masks.batch(project, task, config, item["result"] if item else [], work)
                if masks is not None and item is not None:
                    ids = {str(r.get("id")) for r in masks["result"]}
                    item["result"] = [r for r in item["result"] if str(r.get("id")) not in ids] + masks["result"]
                    item["score"] = round((item["score"] + masks["score"]) / 2, 4)
                item = item or masks
            return item if item is not None else []
        except BadRequest as err:
            if raise_errors:
                raise
            logger.warning("batch predict: task %s refused: %s (%r)", task.get("id"), err.message, err.detail)
            return []


def newest_item(items: Any) -> Mapping | None:
    """The most recently updated non-cancelled annotation (or draft) of a list, or None."""
    items = [i for i in (items if isinstance(items, list) else []) if isinstance(i, Mapping) and not i.get("was_cancelled")]

    def order(i: Mapping) -> tuple[str, float]:  # ids of mixed types must not make max() raise
        number = i.get("id") if isinstance(i.get("id"), (int, float)) else 0
        return str(i.get("updated_at") or i.get("created_at") or ""), number

    return max(items, key=order, default=None)


def _latest_result(task: Mapping) -> list:
    """Result of the newest non-cancelled annotation, else of the newest draft, else []."""
    chosen = newest_item(task.get("annotations")) or newest_item(task.get("drafts"))
    result = chosen.get("result") if chosen else None
    return list(result) if isinstance(result, list) else []


def _same_keyframes(a: list[Keyframe], b: list[Keyframe]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b))
