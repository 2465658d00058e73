"""`fit` for Label Studio: the ``train`` job (key: the project id) fine-tunes the learned mask engine on the project's
approved masks and serves the result only when it measures better on the project's own held-back frames.

1. The project's tasks come from ``GET /api/tasks?project=..&fields=all`` (paginated); per task the newest
   non-cancelled annotation (drafts are not approved) gives its ``brushlabels`` on the frame image list.
2. At most `fit_max_masks` masks, evenly spread over the project, are read: the frame from the task's video (opened
   like every prediction, frames decoded on demand), shrunk as training banks are; the box is the mask's bounding
   box enlarged by BOX_PAD on each side (a tracker's box is looser than the mask). One object of one task is a group.
3. `scribblebox.training.finetune` runs from the project's served checkpoint (its last accepted fine-tune, else
   training.base_checkpoint / masks.checkpoint); accepted -> ``<data_dir>/models/<project>/scribblebox-ft-vNNN.pt``
   (atomic) and the registry pointer moves; rejected -> the served model stays, the attempt is recorded and logged.
A project with fewer than `fit_min_masks` masks, or without a base checkpoint, gives up (job failed, nothing changes).
"""
from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...models.geometry import clip_box, mask_to_box
from ...models.mask_engine import checkpoint_path
from ...settings import Settings
from ..errors import BadRequest
from ..jobs import GiveUp, Job, Progress
from .config import LabelConfig
from .masks import frame_list, saved_masks
from .models_registry import CHECKPOINT_NAME, ModelRegistry
from .predict import Predictor, newest_item, project_key, region_label
from .regions import REGION_TYPE

if TYPE_CHECKING:  # torch: imported only by processes that train
    from ...training.finetune import FitReport

logger = logging.getLogger(__name__)
PAGE_SIZE = 100
BOX_PAD = 0.05


@dataclass
class TaskMasks:
    """One task's approved result and the (label, frame image) masks chosen from it."""

    task: Mapping
    result: list
    chosen: list[tuple[str, int]]


def train_payload(body: Mapping) -> tuple[str, dict]:
    """(project, job payload) from a START_TRAINING (or ANNOTATION_*) webhook body."""
    project = body.get("project")
    if not isinstance(project, Mapping):
        task = body.get("task") if isinstance(body.get("task"), Mapping) else {}
        annotation = body.get("annotation") if isinstance(body.get("annotation"), Mapping) else {}
        project = task.get("project") or annotation.get("project")
    if project in (None, ""):
        raise BadRequest("training webhook names no project", detail={"keys": sorted(body)})
    xml = project.get("label_config") if isinstance(project, Mapping) else None
    return project_key(project), {"label_config": xml if isinstance(xml, str) else None}


def newest_annotation(task: Mapping) -> list | None:
    """The result of the task's newest non-cancelled annotation (what the annotator submitted), or None."""
    annotations = task.get("annotations")
    chosen = newest_item([a for a in (annotations if isinstance(annotations, list) else [])
                          if isinstance(a, Mapping) and isinstance(a.get("result"), list)])
    return list(chosen["result"]) if chosen is not None else None


def mask_keys(result: list, image: str) -> list[tuple[str, int]]:
    """(label, item) of every brush mask on the frame image list (several regions of one label on a page: one)."""
    keys = [(region_label(r), r.get("item_index", 0)) for r in result if isinstance(r, Mapping)
            and r.get("type") == "brushlabels" and r.get("to_name") == image
            and isinstance((r.get("value") or {}).get("rle"), list)]
    return list(dict.fromkeys((label, item) for label, item in keys
                              if label is not None and isinstance(item, int) and not isinstance(item, bool)))


def padded_box(mask: np.ndarray, pad: float = BOX_PAD) -> np.ndarray | None:
    box = mask_to_box(mask)
    if box is None:
        return None
    x, y, w, h = box
    grown = np.array([x - pad * w, y - pad * h, w * (1 + 2 * pad), h * (1 + 2 * pad)])
    return clip_box(grown, mask.shape[1], mask.shape[0])


class FitJob:
    """The ``train`` job handler: ``backend.handlers["train"] = FitJob(predictor, settings)``."""

    def __init__(self, predictor: Predictor, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.server.data_dir)

    def __call__(self, job: Job, progress: Progress) -> None:
        self.run(job.project, job.payload, progress)

    def run(self, project: str, payload: Mapping, progress: Progress) -> FitReport:
        """Fine-tune the project; returns the report (GiveUp when it cannot be fine-tuned as it is)."""
        from ...models.networks.checkpoint import read_checkpoint
        from ...training.finetune import FitOptions, finetune

        training = self.settings.training
        base = self._base(project)
        session = self.predictor.media.session
        if session is None:
            raise GiveUp("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so the backend can read the project's annotations")
        config = self._config(project, payload)
        progress(0.0, f"listing the tasks of project {project}")
        plan = self._plan(project, config)
        count = sum(len(t.chosen) for t in plan)
        if count < training.fit_min_masks:
            raise GiveUp(f"project {project} has {count} approved brush mask(s); fine-tuning needs at least "
                         f"{training.fit_min_masks} (training.fit_min_masks): submit more corrected masks first")
        try:
            crop = int((read_checkpoint(base).get("train_args") or {}).get("crop", 256))
        except ValueError as err:
            raise GiveUp(f"cannot fine-tune from {base}: {err}") from None
        samples = self._samples(plan, config, max(480, 2 * crop), progress)
        if len(samples) < max(training.fit_min_masks, 2):
            raise GiveUp(f"project {project}: only {len(samples)} of {count} approved masks could be read from "
                         f"their videos (see the log); fine-tuning needs at least {training.fit_min_masks}")
        options = FitOptions(iters=training.fit_iters, batch=training.fit_batch, holdout=training.fit_holdout,
                             min_gain=training.fit_min_gain, lr_max=training.fit_lr_max,
                             train_encoder=training.fit_train_encoder, device=self.settings.masks.device)
        serving = None  # the project serves `base` itself, else the configured classical engine: measure that one
        if self.registry.current(project) is None and self.settings.masks.engine != "learned":
            from ...models.mask_engine import MaskEngine

            serving = MaskEngine.from_settings(self.settings.masks)
        try:
            report = finetune(base, samples, options, lambda f, m: progress(0.3 + 0.68 * f, m), serving=serving)
        except ValueError as err:  # the data cannot train anything (e.g. every mask empty)
            raise GiveUp(f"project {project}: {err}") from None
        if report.accepted:
            path = report.save(self.registry.folder(project), CHECKPOINT_NAME)
            self.registry.accept(project, path, report.to_dict(), str(base))
            logger.info("project %s: serving %s (%s)", project, path.name, report.reason)
            progress(1.0, f"serving {path.name}: {report.reason}")
        else:
            self.registry.reject(project, report.to_dict(), str(base))
            logger.info("project %s: kept %s, the fine-tuned model is not better: %s", project, base.name, report.reason)
            progress(1.0, f"kept {base.name}: {report.reason}")
        return report

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _base(self, project: str) -> Path:
        current = self.registry.current(project)
        if current is not None:
            return current
        configured = self.settings.training.base_checkpoint or checkpoint_path(self.settings.masks)
        if not configured:
            raise GiveUp("no mask checkpoint to fine-tune: set masks.checkpoint (or training.base_checkpoint) to a "
                         "file written by `scribblebox train`")
        path = Path(configured)
        if not path.is_file():
            raise GiveUp(f"{path}: no such mask checkpoint (training.base_checkpoint / masks.checkpoint)")
        return path

    def _config(self, project: str, payload: Mapping) -> LabelConfig:
        xml = payload.get("label_config") or self.predictor.store.get_label_config(project)
        if not xml:
            xml = self._get(f"/api/projects/{project}").get("label_config")
        try:
            config = self.predictor.label_config(xml, project)
        except BadRequest as err:
            raise GiveUp(f"project {project}: {err.message}") from None
        if not any(config.brush_for(name) for name in config.image_lists):
            raise GiveUp(f"project {project}: the labeling config has no <Image valueList> with <BrushLabels>, so "
                         "there are no masks to learn from (see config/label_studio/video_masks.xml)")
        return config

    def _get(self, path: str) -> dict:
        try:
            return self.predictor.media.session.get_json(path)
        except BadRequest as err:  # Label Studio down or refusing: worth retrying later
            raise RuntimeError(f"{err.message} ({err.detail})") from None

    def tasks(self, project: str) -> Iterator[Mapping]:
        """Every task of the project with its annotations, page by page."""
        session, page, seen = self.predictor.media.session, 1, 0
        while True:
            url = f"/api/tasks?project={project}&page={page}&page_size={PAGE_SIZE}&fields=all"
            try:
                resp = session.get(url)
            except BadRequest as err:  # unreachable: retried later
                raise RuntimeError(f"{err.message} ({err.detail})") from None
            if resp.status_code == 404 and page > 1:
                return  # past the last page
            if resp.status_code != 200:
                raise RuntimeError(f"Label Studio answered {resp.status_code} for {url}: {resp.text[:300]}")
            try:
                body = resp.json()
            except ValueError:
                raise RuntimeError(f"Label Studio sent no JSON for {url}") from None
            items = body.get("tasks", []) if isinstance(body, Mapping) else body
            total = body.get("total") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not items:
                return
            for task in items:
                if isinstance(task, Mapping) and "annotations" not in task and task.get("total_annotations"):
                    task = self._get(f"/api/tasks/{int(task['id'])}")  # a listing without annotations
                if isinstance(task, Mapping):
                    yield task
            seen += len(items)
            if (isinstance(total, int) and seen >= total) or len(items) < PAGE_SIZE:
                return
            page += 1

    def _plan(self, project: str, config: LabelConfig) -> list[TaskMasks]:
        """The tasks' approved masks, at most fit_max_masks of them, evenly spread."""
        plan = []
        for task in self.tasks(project):
            result = newest_annotation(task)
            if not result or not isinstance(task.get("data"), Mapping):
                continue
            try:
                frames = frame_list(config, task["data"])
            except BadRequest as err:
                logger.warning("fit: task %s skipped: %s", task.get("id"), err.message)
                continue
            keys = mask_keys(result, frames.image)
            if keys:
                plan.append(TaskMasks(task, result, keys))
        flat = [(i, key) for i, t in enumerate(plan) for key in t.chosen]
        limit = self.settings.training.fit_max_masks
        if len(flat) > limit > 0:
            keep = {flat[j] for j in np.unique(np.linspace(0, len(flat) - 1, limit).round().astype(int))}
            for i, t in enumerate(plan):
                t.chosen = [key for key in t.chosen if (i, key) in keep]
        return [t for t in plan if t.chosen]

    def _samples(self, plan: list[TaskMasks], config: LabelConfig, max_side: int, progress: Progress) -> list:
        from ...training.finetune import ApprovedSample, shrink

        samples = []
        for n, entry in enumerate(plan):
            task_id = entry.task.get("id")
            progress(0.05 + 0.25 * n / len(plan), f"reading the approved frames of task {task_id}")
            try:
                samples += self._task_samples(entry, config, max_side, ApprovedSample, shrink)
            except BadRequest as err:  # one unreadable video must not stop the project's fine-tune
                logger.warning("fit: task %s skipped: %s (%r)", task_id, err.message, err.detail)
            except ValueError as err:  # a frame the file does not hold (FrameIndexError), a bad mask size
                logger.warning("fit: task %s skipped: %s", task_id, err)
        return samples

    def _task_samples(self, entry: TaskMasks, config: LabelConfig, max_side: int, sample_type: type,
                      shrink: Callable) -> list:
        data = entry.task["data"]
        frames = frame_list(config, data)
        regions = [r for r in entry.result if isinstance(r, Mapping) and r.get("type") == REGION_TYPE]
        to_name = str(regions[0].get("to_name") or "") if regions else ""
        out = []
        with self.predictor.open_video(config, to_name, data, [r for r in regions if r.get("to_name") == to_name]) as opened:
            video = opened.video
            by_label = saved_masks(entry.result, frames, (video.height, video.width))
            for label, item in entry.chosen:
                mask = by_label.get(label, {}).get(item)
                if mask is None or not mask.any():
                    continue
                try:
                    index = frames.frame(item, video.num_frames)
                except BadRequest as err:
                    logger.warning("fit: task %s, %s on page %d skipped: %s", entry.task.get("id"), label, item, err.message)
                    continue
                image, small, _ = shrink(video.frame(index), mask, max_side)
                box = padded_box(small)
                if box is not None:
                    out.append(sample_type(image, box, small, f"{entry.task.get('id')}/{label}", index))
        return out


class TrainTrigger:
    """`training.fit_every_annotations`: counts a project's submitted annotations (a file under its model folder,
    locked, so every gunicorn worker shares the count) and says when another fine-tune is due."""

    def __init__(self, registry: ModelRegistry, every: int) -> None:
        self.registry = registry
        self.every = int(every)

    def count(self, project: str) -> bool:
        """One more annotation; True (and the count restarts) every `every` annotations; always False when off."""
        if self.every <= 0:
            return False
        folder = self.registry.folder(project)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "annotations.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = folder / "annotations.count"
            try:
                seen = int(path.read_text().strip() or 0) + 1
            except (FileNotFoundError, ValueError):
                seen = 1
            due = seen >= self.every
            path.write_text("0" if due else str(seen))
        return due
