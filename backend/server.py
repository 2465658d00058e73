"""The Label Studio ML-backend HTTP server: routes, the per-process engine, gunicorn launch.

gunicorn entry point: ``scribblebox.backend.server:create_app()``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, jsonify, request

from .. import __version__
from ..settings import MaskSettings, Settings, TrackingSettings, load_settings
from .auth import register_basic_auth
from .errors import BadRequest, register_error_handlers
from .jobs import GiveUp, Handler, Job, JobQueue, JobWorker, Progress
from .label_studio.fit import FitJob, TrainTrigger, train_payload
from .label_studio.masks import MaskPredictor
from .label_studio.models_registry import ModelRegistry
from .label_studio.predict import Predictor, project_key
from .media import MediaResolver
from .state import TrackStore

logger = logging.getLogger(__name__)
EXTENSION = "scribblebox"
RECORDED_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})

_ENGINES: dict[TrackingSettings | MaskSettings, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _once(key: Any, build: Callable[[], Any], what: str) -> Any:
    """The process's engine for `key`, built on first use (weights/trackers load once, never per request)."""
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            logger.info("building %s", what)
            _ENGINES[key] = build()
        return _ENGINES[key]


def get_engine(tracking: TrackingSettings) -> Any:
    from ..models.curvevot import CurveVOT

    return _once(tracking, lambda: CurveVOT.from_settings(tracking), f"CurveVOT engine (tracker={tracking.tracker})")


def get_mask_engine(masks: MaskSettings) -> Any:
    """Shared by request threads and the job thread."""
    from ..models.mask_engine import MaskEngine

    return _once(masks, lambda: MaskEngine.from_settings(masks), f"mask engine ({masks.engine})")


def model_version(settings: Settings) -> str:
    return f"scribblebox-{__version__}-{settings.tracking.tracker}"


class Metrics:
    """Per-process counters for GET /metrics (each gunicorn worker counts its own requests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "errors": 0, "predictions": 0, "webhooks": 0, "seconds": 0.0}

    def add(self, **amounts: float) -> None:
        with self._lock:
            for key, amount in amounts.items():
                self.counts[key] += amount

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.counts, "seconds": round(self.counts["seconds"], 3), "pid": os.getpid()}


@dataclasses.dataclass
class Backend:
    """Everything one process serves with: the HTTP app and a job worker (thread or RQ process) share it."""

    settings: Settings
    predictor: Predictor
    metrics: Metrics
    background: ThreadPoolExecutor
    jobs: JobQueue
    worker: JobWorker
    handlers: dict[str, Handler] = dataclasses.field(default_factory=dict)  # job kind -> handler(job, progress)
    registry: ModelRegistry | None = None  # per-project fine-tuned checkpoints
    trigger: TrainTrigger | None = None  # training.fit_every_annotations

    def enqueue_training(self, body: Mapping) -> str | None:
        """START_TRAINING (or the every-N trigger): one train job per project (key = project id)."""
        try:
            project, payload = train_payload(body)
        except BadRequest as err:
            logger.warning("webhook %s: no training job (%s)", body.get("action"), err.message)
            return None
        self.enqueue("train", project, project, payload)
        return project

    def count_annotation(self, body: Mapping) -> None:
        """Every N saved mask annotations of a project start a training job (0 = off)."""
        if self.trigger is None or self.trigger.every <= 0:
            return
        try:
            due = self.trigger.count(train_payload(body)[0])
        except BadRequest:
            return
        if due:
            self.enqueue_training(body)

    def enqueue(self, kind: str, project: str, key: str, payload: dict) -> int:
        """Store a job before answering (so it survives a crash) and wake this process's worker; its generation."""
        if kind not in self.handlers:
            raise ValueError(f"no handler for job kind {kind!r}; known: {sorted(self.handlers)}")
        generation = self.jobs.enqueue(project, key, payload, kind=kind)
        logger.info("job %s %s/%s queued (generation %d)", kind, project, key, generation)
        self.worker.start()
        self.worker.wake()
        return generation

    def run_job(self, job: Job, progress: Progress) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:
            raise GiveUp(f"no handler for job kind {job.kind!r} in this version")
        handler(job, progress)

    def enqueue_masks(self, payload: Mapping) -> None:
        """The webhook's mask re-propagation job (a payload without a task is logged and dropped)."""
        masks: MaskPredictor = self.predictor.masks
        try:
            project, task_id, job = masks.job_payload(payload)
        except (BadRequest, KeyError, TypeError) as err:
            logger.warning("webhook %s: no mask job (%s)", payload.get("action"), err)
            return
        self.enqueue("masks", project, task_id, job)

    def record_later(self, payload: Mapping) -> Future:
        """Webhooks must answer within LS's 1 s: fetching/decoding for the record happens on a background thread."""
        def run() -> None:
            try:
                count = self.predictor.record_annotation(payload)
                logger.info("webhook %s: recorded %d region(s)", payload.get("action"), count)
            except BadRequest as err:
                logger.warning("webhook %s not recorded: %s (%r)", payload.get("action"), err.message, err.detail)
            except Exception:  # a background failure must never kill the worker
                logger.exception("webhook %s failed", payload.get("action"))

        return self.background.submit(run)


def _json_body() -> dict:
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise BadRequest("request body must be JSON", detail={"content_type": request.content_type, "bytes": len(request.data)})
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", detail={"got": type(body).__name__})
    return body


def build_backend(settings: Settings, env: Mapping[str, str], engine: Any = None, opener: Callable[[Path], Any] | None = None,
                  mask_engine: Any = None) -> Backend:
    """The stores, predictors and job handlers of one process (the HTTP app or a job worker). With REDIS_URL: state and
    job records in Redis, jobs run by RQ workers (`scribblebox worker`); else SQLite (WAL) and a worker thread."""
    data_dir = Path(settings.server.data_dir)
    redis_url = env.get("REDIS_URL")
    if redis_url:  # imported here: redis and rq are only needed in this mode
        try:
            from .redis_state import DEFAULT_PREFIX, RedisTrackStore
            from .rq_jobs import NoThread, RQJobQueue
        except ImportError as err:
            raise RuntimeError(f"REDIS_URL is set but {err.name} is not installed: pip install 'scribblebox[redis]' "
                               "(or unset REDIS_URL for the embedded SQLite mode)") from err
        prefix = env.get("SCRIBBLEBOX_REDIS_PREFIX") or DEFAULT_PREFIX
        store: Any = RedisTrackStore.from_url(redis_url, prefix)
    else:
        store = TrackStore(data_dir / "state.sqlite3")
    predictor = Predictor(
        engine=(lambda: engine) if engine is not None else (lambda: get_engine(settings.tracking)),
        store=store,
        media=MediaResolver.from_env(data_dir, settings.server.max_download_mb, env),
        model_version=model_version(settings),
        default_fps=settings.server.default_frame_rate,
        opener=opener,
    )
    registry = ModelRegistry(data_dir)

    def masks_for(project: str | None = None) -> Any:
        """The project's mask engine: its fine-tuned checkpoint when it has one, else the configured engine."""
        if mask_engine is not None:
            return mask_engine
        return get_mask_engine(registry.mask_settings(project, settings.masks) if project else settings.masks)

    predictor.masks = MaskPredictor(predictor, masks_for)
    predictor.masks.registry = registry
    if redis_url:
        jobs: Any = RQJobQueue.from_url(redis_url, prefix, lease_s=settings.server.job_lease_s)
        worker: Any = NoThread()
    else:
        jobs = JobQueue(data_dir / "state.sqlite3", lease_s=settings.server.job_lease_s)
        worker = JobWorker(jobs, lambda job, progress: backend.run_job(job, progress))
    backend = Backend(settings, predictor, Metrics(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook"),
                      jobs, worker)
    backend.registry = registry
    backend.trigger = TrainTrigger(registry, settings.training.fit_every_annotations)
    backend.handlers["train"] = FitJob(predictor, settings, registry)
    backend.handlers["masks"] = lambda job, progress: predictor.masks.run_job(job.project, job.key, job.payload, progress)
    backend.handlers["complete"] = predictor.run_complete  # long videos: the rest after the windowed answer
    predictor.configure_long_videos(settings.server, backend.enqueue)
    return backend


def create_app(settings: Settings | None = None, engine: Any = None, env: Mapping[str, str] | None = None,
               opener: Callable[[Path], Any] | None = None, mask_engine: Any = None) -> Flask:
    """App factory. engine/mask_engine/opener: injected stand-ins for tests; by default the per-process CurveVOT,
    MaskEngine and open_video. A job worker thread starts now if jobs are pending, else with the first job."""
    settings = settings or load_settings(env=dict(env) if env is not None else None)
    env = os.environ if env is None else env
    if not logging.getLogger().handlers:  # under gunicorn nothing configures the app's loggers: INFO to stderr
        logging.basicConfig(level=env.get("SCRIBBLEBOX_LOG_LEVEL", "INFO").upper(),
                            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    backend = build_backend(settings, env, engine=engine, opener=opener, mask_engine=mask_engine)
    jobs = backend.jobs
    if jobs.seconds_to_next() is not None or jobs.counts().get("running"):
        backend.worker.start()  # jobs left by an earlier run (or a dead worker's claim, after its lease)
    app = Flask("scribblebox")
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_request_mb * 2**20
    app.extensions[EXTENSION] = backend
    register_error_handlers(app)
    register_basic_auth(app, env)
    _register_routes(app, backend)
    return app


def _register_routes(app: Flask, backend: Backend) -> None:
    predictor, metrics = backend.predictor, backend.metrics

    @app.after_request
    def _count(response):
        metrics.add(requests=1, errors=int(response.status_code >= 400))
        return response

    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": "ScribbleBox"})

    @app.post("/setup")
    def setup():
        body = _json_body()
        schema = body.get("schema")
        if isinstance(schema, str) and schema.strip():
            predictor.store.put_label_config(project_key(body.get("project")), schema)
        return jsonify({"model_version": predictor.version(project_key(body.get("project")))})

    @app.post("/predict")
    def predict():
        body = _json_body()
        start = time.perf_counter()
        answer = predictor.predict(body)
        metrics.add(predictions=len(answer["results"]), seconds=time.perf_counter() - start)
        return jsonify(answer)

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = body.get("action")
        metrics.add(webhooks=1)
        if action == "START_TRAINING":
            project = backend.enqueue_training(body)
            return jsonify({"status": "ok", "action": action, "job": "train" if project else None, "project": project})
        if isinstance(action, str) and action in RECORDED_ACTIONS:  # any JSON may come: a list is unhashable
            backend.record_later(body)
            if MaskPredictor.is_mask_payload(body):
                backend.enqueue_masks(body)
                backend.count_annotation(body)
        return jsonify({"status": "ok", "action": action})

    @app.get("/metrics")
    def metrics_route():
        return jsonify({**metrics.snapshot(), "jobs": backend.jobs.counts()})

    @app.get("/jobs")
    def jobs_route():
        """Background jobs, most recently updated first: kind, task, status, progress (0..1), message, last error."""
        return jsonify({"jobs": backend.jobs.list(), "counts": backend.jobs.counts()})

    @app.get("/versions")
    def versions():
        """Label Studio sends {"project": "<id>.<ts>"} as a JSON body of this GET: the project's version first."""
        body = request.get_json(force=True, silent=True)
        project = body.get("project") if isinstance(body, dict) else request.args.get("project")
        current = predictor.version(project_key(project)) if project else predictor.model_version
        return jsonify({"versions": list(dict.fromkeys([current, predictor.model_version]))})


def _gunicorn_extras() -> list[str]:
    """Newer gunicorn opens a control socket shared by every instance of the user: not wanted for a backend."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any("--no-control-socket" in s.cli for s in KNOWN_SETTINGS if s.cli) else []


def serve(settings: Settings, host: str = "0.0.0.0", port: int = 9090, workers: int = 2, dev: bool = False) -> int:
    """Run the backend: gunicorn workers (each builds its own engine once), or Flask's dev server."""
    if dev:
        create_app(settings).run(host=host, port=port, threaded=True)
        return 0
    data_dir = Path(settings.server.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "serve-settings.yaml"  # workers rebuild exactly these settings
    config.write_text(yaml.safe_dump(dataclasses.asdict(settings), sort_keys=False))
    env = {**os.environ, "SCRIBBLEBOX_CONFIG": str(config.resolve())}
    # torch (learned engine, fine-tuning) runs in every request thread of every worker: one CPU thread each, or their
    # spinning thread pools slow every call down on shared cores (2 workers x 4 threads already fill a small machine).
    env.setdefault("OMP_NUM_THREADS", "1")
    # Threads per worker: /health (1 s timeout in Label Studio) must answer while a long predict is running.
    command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", "4", "--timeout", "120",
               "--bind", f"{host}:{port}", *_gunicorn_extras(), "scribblebox.backend.server:create_app()"]
    logger.info("starting %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    # Become gunicorn (same PID): stop signals (docker stop, systemd, Ctrl-C) reach its arbiter, which shuts the
    # workers down gracefully; a child process would be orphaned when this one is killed.
    os.execve(sys.executable, command, env)
    return 0  # not reached (tests replace os.execve)
