"""Long videos within Label Studio's 100 s /predict timeout: a window now, the whole video as a background job.

On a video longer than `server.window_frames`, an interactive or batch call computes only a window of that many
frames around what the user touched (the edited keyframes, the clicked frames), within `server.predict_deadline_s`
of the call's start (work that misses it is abandoned: the region is answered as the user left it). Keyframes
outside the window stay as the user has them. A ``complete`` job (one per task; a newer call replaces its payload)
then tracks every region over the whole video from the same anchors, computes the masks of every frame, stores
the full results as the task's state and posts them to Label Studio (POST /api/predictions); GET /jobs shows its
progress.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ...models.masks import MaskResult, Scribble
from ...models.progress import Progress, scaled
from ...models.track import Keyframe
from ...models.window import FrameWindow, WindowClosed
from ..errors import BadRequest
from ..jobs import GiveUp, Job
from ..state import keyframes_in, keyframes_out
from .regions import REGION_TYPE

logger = logging.getLogger(__name__)
T = TypeVar("T")
JOB_KIND = "complete"
POSTED_AT = 0.95  # the job's progress once everything is computed; 1.0 once Label Studio has the prediction


class Deadline:
    """The time an interactive call has left; `run` gives up on work that outlasts it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.end = clock() + max(float(seconds), 0.0)

    def left(self) -> float:
        return max(self.end - self.clock(), 0.0)

    def run(self, window: FrameWindow, work: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, result) when `work` (reading frames through `window` only) ends in time; else (False, None) and the
        window is closed, so the abandoned thread fails at its next frame and never reads the video again.
        Exceptions of `work` are raised here."""
        if self.left() <= 0:
            return False, None
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = work()
            except WindowClosed:
                logger.debug("abandoned work on frames %d..%d stopped", window.start, window.stop - 1)
            except Exception as err:  # handed to the caller's thread, which raises it
                box["error"] = err

        thread = threading.Thread(target=target, name="predict-window", daemon=True)
        thread.start()
        thread.join(self.left())
        if thread.is_alive():
            window.close()
            return False, None
        if "error" in box:
            raise box["error"]
        return True, box["value"]


def window_around(frames: Sequence[int], num_frames: int, size: int) -> tuple[int, int]:
    """[start, stop) of `size` frames centred on `frames` (on the last one when they do not fit in one window)."""
    size = max(1, min(int(size), num_frames))
    if not frames:
        return 0, size
    lo, hi = min(frames), max(frames)
    centre = (lo + hi) // 2 if hi - lo < size else frames[-1]
    start = min(max(centre - size // 2, 0), num_frames - size)
    return start, start + size


@dataclass
class LongWork:
    """One task's share of a /predict call: the windows answered now and what its `complete` job must finish."""

    project: str
    label_config: str | None
    window_frames: int
    deadline: Deadline
    task: dict | None = None  # {"id", "data"} once the call has the task's data
    regions: dict[str, dict] = field(default_factory=dict)  # region id -> {"region", "anchors" (None: final)}
    masks: dict | None = None  # {"context", "labels"}: the objects whose masks the job computes on every frame
    windowed: bool = False
    warnings: list[str] = field(default_factory=list)

    def bind(self, task: Mapping) -> None:
        self.task = {"id": task["id"], "data": task["data"]}

    def is_long(self, video: Any) -> bool:
        return 0 < self.window_frames < video.num_frames

    def span(self, num_frames: int, frames: Sequence[int]) -> tuple[int, int]:
        return window_around(list(frames), num_frames, self.window_frames)

    def add_region(self, region: Mapping, anchors: Sequence[Keyframe] | None = None) -> None:
        """A region of the call: with anchors, the job tracks it over the whole video; without, it is posted as is."""
        rid = str(region.get("id"))
        if anchors is not None or rid not in self.regions:
            self.regions[rid] = {"region": dict(region), "anchors": None if anchors is None else keyframes_out(anchors)}

    def add_masks(self, context: list, labels: Sequence[str]) -> None:
        self.windowed = True
        self.masks = {"context": [r for r in context if isinstance(r, Mapping)], "labels": list(labels)}

    def payload(self) -> dict:
        return {"task": self.task, "label_config": self.label_config, "regions": list(self.regions.values()),
                "masks": self.masks}

    # ---- windows ------------------------------------------------------------------------------------------------
    def track_window(self, engine: Any, video: Any, given: list[Keyframe], anchors: list[Keyframe],
                     answered_before: Sequence[Keyframe], rid: str) -> tuple[list[Keyframe] | None, float, list[str]]:
        """The region's keyframes with the window around its edited anchors tracked (None if that missed the
        deadline), its score there, the engine's warnings."""
        n = video.num_frames
        edited = [a.frame for a in anchors if not any(a.same_as(k) for k in answered_before)] or [a.frame for a in anchors]
        start, stop = self.span(n, edited)
        inside = [Keyframe.of(k.frame - start, k.box, k.enabled) for k in anchors if start <= k.frame < stop]
        window = FrameWindow(video, start, stop)
        began = time.perf_counter()
        done, result = self.deadline.run(window, lambda: engine.track(window, inside))
        self.windowed = True
        if not done:
            self._late(f"region {rid}", start, stop)
            return None, 0.0, []
        logger.info("region %s: window of frames %d..%d tracked in %.1f s; the rest of the %d frames goes to a job",
                    rid, start, stop - 1, time.perf_counter() - began, n)
        scores = np.asarray(result.scores, dtype=np.float64)
        score = float(np.nanmean(scores)) if np.isfinite(scores).any() else 0.0
        keyframes = [Keyframe.of(k.frame + start, k.box, k.enabled) for k in result.keyframes]
        keyframes += [k for k in given if not start <= k.frame < stop]
        self.warnings.append(f"region {rid}: video frames {start}..{stop - 1} of {n} tracked now; "
                             "the whole track follows as a prediction (see /jobs)")
        return sorted(keyframes, key=lambda k: k.frame), score, list(result.warnings)

    def masks_window(self, engine: Any, video: Any, boxes: np.ndarray, scribbles: Sequence[Scribble],
                     previous: MaskResult | None, approved: Mapping[int, np.ndarray], focus: Sequence[int],
                     label: str) -> MaskResult | None:
        """The engine's masks on the window around `focus` (video frames), in video frames; None if late."""
        start, stop = self.span(video.num_frames, focus)
        window = FrameWindow(video, start, stop)

        def into(masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
            return {f - start: m for f, m in masks.items() if start <= f < stop}

        def back(masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
            return {f + start: m for f, m in masks.items()}

        inside = [Scribble(s.frame - start, s.points, s.positive, s.radius) for s in scribbles if start <= s.frame < stop]
        before = MaskResult(into(previous.masks), into(previous.approved)) if previous is not None else None
        done, result = self.deadline.run(window, lambda: engine.run(window, boxes[start:stop], inside, before,
                                                                    approved=into(approved)))
        if not done:
            self._late(f"object {label!r}", start, stop)
            return None
        self.warnings.append(f"object {label!r}: masks of video frames {start}..{stop - 1} of {video.num_frames} now; "
                             "the masks of every frame follow as a prediction (see /jobs)")
        return MaskResult(back(result.masks), back(result.approved), result.seconds)

    def _late(self, what: str, start: int, stop: int) -> None:
        logger.warning("%s: frames %d..%d not done within server.predict_deadline_s; left to the job", what, start, stop - 1)
        self.warnings.append(f"{what}: not done within server.predict_deadline_s; the whole video follows as a "
                             "prediction (see /jobs)")


def finish(work: LongWork, item: Any, enqueue: Callable[..., int] | None, can_post: bool) -> Any:
    """Queue the task's `complete` job when part of the answer was windowed; the item says what is coming."""
    if not work.windowed or not isinstance(item, dict):
        return item
    if work.task is None:
        return item
    if enqueue is not None and can_post:
        enqueue(JOB_KIND, work.project, str(work.task["id"]), work.payload())
    else:
        work.warnings.append("long video: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so the backend can post the "
                             "rest of the video as a prediction; only the window was computed")
    item["warnings"] = list(item.get("warnings", [])) + work.warnings
    return item


def complete_job(predictor: Any, job: Job, progress: Progress) -> dict:
    """The ``complete`` job: every region over the whole video from the call's anchors, masks on every frame;
    the full results become the task's state and are posted as one prediction. Returns the posted item."""
    payload = job.payload
    if predictor.media.session is None or predictor.masks is None:
        raise GiveUp("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so the backend can post predictions")
    try:
        config = predictor.label_config(payload.get("label_config"), job.project)
        task = predictor.with_data(dict(payload["task"]), need_annotations=bool(payload.get("masks")))
        entries = list(payload.get("regions") or [])
        parts = sum(1 for e in entries if e.get("anchors")) + (1 if payload.get("masks") else 0)
        share = POSTED_AT / max(parts, 1)  # of the job's progress per region or for the masks; posting is the rest
        outs, scores, part = {}, [], 0
        regions = [e["region"] for e in entries]
        anchors = {str(e["region"].get("id")): e.get("anchors") for e in entries}
        for to_name, group in predictor.by_video(regions).items():
            with predictor.open_video(config, to_name, task["data"], group) as opened:
                for region in group:
                    rid = str(region.get("id"))
                    if not anchors[rid]:
                        outs[rid] = region
                        continue
                    progress(part * share, f"tracking region {rid}")
                    out, score, _ = predictor.track_region(job.project, str(task["id"]), region, opened,
                                                           anchors=keyframes_in(anchors[rid]),
                                                           progress=scaled(progress, part * share, (part + 1) * share))
                    outs[rid], part = out, part + 1
                    scores.append(score)
        result = [outs[str(r.get("id"))] for r in regions]
        if payload.get("masks"):
            context = [outs.get(str(r.get("id")), r) if r.get("type") == REGION_TYPE else r for r in payload["masks"]["context"]]
            masks = predictor.masks.objects(job.project, task, context, payload["masks"]["labels"], config,
                                            progress=scaled(progress, part * share, POSTED_AT))
            ids = {str(r.get("id")) for r in masks["result"]}
            result = [r for r in result if str(r.get("id")) not in ids] + masks["result"]
            scores.append(masks["score"])
    except BadRequest as err:
        if err.status >= 500:
            raise
        raise GiveUp(f"{err.message} ({err.detail!r})") from None
    item = {"model_version": predictor.version(job.project), "score": round(float(np.mean(scores)) if scores else 0.0, 4),
            "result": result}
    progress(POSTED_AT, f"posting the prediction for task {task['id']}")
    predictor.masks.post(int(task["id"]), item)
    progress(1.0, f"posted the prediction for task {task['id']} ({len(result)} results)")
    return item
