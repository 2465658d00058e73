"""Background jobs on Redis + RQ (when REDIS_URL is set): any gunicorn worker enqueues, RQ workers on any machine run.

The durable record of a job is a Redis hash (redis_jobs.py) written before the webhook answers, with JobQueue's
semantics. An RQ job is only a wake-up carrying (kind, project, key): the worker claims the record (reading the newest
payload), runs ``Backend.run_job`` with a heartbeat, then finishes or fails it; a newer payload that arrived meanwhile
is woken again at once. The handler's failures never reach RQ: they are recorded and retried with our backoff.

Liveness is ours, not RQ's: RQ's SimpleWorker (chosen so that a worker keeps its engine and GPU weights between jobs;
a forking Worker would rebuild them in every work-horse, and CUDA does not survive a fork) does not heartbeat a running
job, and RQ sees a dead worker's job only after the whole job timeout, then fails it (no retry without RQ's Retry). So
every worker sweeps each second: pending records that are due (retries after their backoff) and running records whose
claim was not renewed for `lease_s` (their worker died) get a new wake-up. Duplicate wake-ups are harmless: one of them
claims the record, the others find nothing due.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from ..settings import Settings
from .jobs import Job, JobWorker
from .redis_jobs import RedisJobRecords
from .redis_state import DEFAULT_PREFIX, connect

if TYPE_CHECKING:
    from .server import Backend

logger = logging.getLogger(__name__)
RQ_JOB_TIMEOUT_S = 2 * 24 * 3600  # RQ's hard limit per wake-up (SIGALRM in SimpleWorker); our lease finds dead workers
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})


class RQJobQueue(RedisJobRecords):
    """JobQueue's interface on Redis records; wake-ups go to the RQ queue ``{prefix}-{kind}``."""

    def __init__(self, client: redis.Redis, rq_connection: redis.Redis, prefix: str = DEFAULT_PREFIX, **options: Any) -> None:
        super().__init__(client, prefix, **options)
        self.rq_connection = rq_connection

    @classmethod
    def from_url(cls, url: str, prefix: str = DEFAULT_PREFIX, **options: Any) -> RQJobQueue:
        return cls(connect(url), connect(url, decode=False), prefix, **options)

    def rq_queue(self, kind: str) -> Queue:
        return Queue(f"{self.prefix}-{kind}", connection=self.rq_connection)

    def enqueue(self, project: str, key: str, payload: dict, kind: str = "masks") -> int:
        """Store (or replace) the job, then wake a worker unless a wake-up is already waiting; returns its generation.
        A running job keeps running and runs again after."""
        generation, status, wakeup = self.store(project, key, payload, kind)
        if status == "pending" and not self.waiting(wakeup):
            self.wake(kind, str(project), str(key))
        return generation

    def wake(self, kind: str, project: str, key: str) -> str:
        """Push a wake-up for the job onto its kind's RQ queue; returns the RQ job id."""
        wakeup = self.rq_queue(kind).enqueue(perform, kind, project, key, job_timeout=RQ_JOB_TIMEOUT_S,
                                             failure_ttl=7 * 24 * 3600, description=f"{kind} {project}/{key}")
        self.mark_woken(kind, project, key, wakeup.id)
        return wakeup.id

    def waiting(self, rq_id: str) -> bool:
        """Whether this wake-up is still to be run by a worker."""
        if not rq_id:
            return False
        try:
            return RQJob.fetch(rq_id, connection=self.rq_connection).get_status(refresh=False) in WAITING
        except NoSuchJobError:
            return False

    def sweep(self) -> int:
        """Wake workers for due pending jobs and for running ones whose worker died; returns how many were woken."""
        woken = 0
        for wakeup, kind, project, key in self.wakeups_due():
            if not self.waiting(wakeup):
                logger.info("job %s %s/%s: waking a worker (%s)", kind, project, key, "again" if wakeup else "first")
                self.wake(kind, project, key)
                woken += 1
        return woken


class NoThread:
    """Backend.worker in the Redis mode: jobs run in RQ worker processes (`scribblebox worker`), not in the app."""

    def start(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        pass


class _OneRecord:
    """JobWorker's view of one record, so that RQ wake-ups reuse its heartbeat, progress log and error handling."""

    def __init__(self, queue: RQJobQueue, kind: str, project: str, key: str) -> None:
        self.queue, self.ids = queue, (kind, project, key)
        self.lease_s = queue.lease_s

    def claim(self) -> Job | None:
        return self.queue.claim(*self.ids)

    def finish(self, job: Job) -> None:
        if self.queue.finish(job) == "pending":  # a newer payload came while it ran
            self.queue.wake(*self.ids)

    def fail(self, job: Job, error: str, permanent: bool = False) -> float:
        return self.queue.fail(job, error, permanent)

    def renew(self, job: Job) -> bool:
        return self.queue.renew(job)

    def progress(self, job: Job, fraction: float, message: str = "") -> None:
        self.queue.progress(job, fraction, message)


_PROCESS: dict[str, Any] = {}  # this process's Backend, built once (engines and weights stay loaded between jobs)


def process_backend(settings: Settings | None = None, env: Mapping[str, str] | None = None,
                    setup: Callable[[Backend], None] | None = None) -> Backend:
    """The worker process's Backend; given arguments rebuild it (run_worker), none reuse it (or build from os.environ)."""
    if "backend" not in _PROCESS or settings is not None:
        from ..settings import load_settings
        from .server import build_backend

        env = os.environ if env is None else env
        if not env.get("REDIS_URL"):
            raise RuntimeError("RQ job workers need REDIS_URL (the Redis the backend's web workers use)")
        backend = build_backend(settings or load_settings(env=dict(env)), env)
        if setup is not None:
            setup(backend)
        _PROCESS["backend"] = backend
    return _PROCESS["backend"]


def perform(kind: str, project: str, key: str) -> str:
    """The RQ task: run the job's newest payload if it is due; failures are recorded in its record, never raised."""
    backend = process_backend()
    worker = JobWorker(_OneRecord(backend.jobs, kind, project, key), backend.run_job)  # type: ignore[arg-type]
    return "ran" if worker.run_once() else "not due"


def run_worker(settings: Settings, env: Mapping[str, str], queues: Sequence[str] | None = None, burst: bool = False,
               setup: Callable[[Backend], None] | None = None, poll_s: float = 1.0) -> int:
    """Run jobs of the given kinds (default: every kind the backend handles) until stopped (SIGTERM: after the current
    job), or with burst until no job is pending or running anywhere. setup(backend) may add handlers (tests)."""
    backend = process_backend(settings, env, setup)
    jobs: RQJobQueue = backend.jobs  # type: ignore[assignment]
    kinds = list(queues or sorted(backend.handlers))
    unknown = sorted(set(kinds) - set(backend.handlers))
    if unknown:
        raise ValueError(f"no handler for job kind(s) {unknown}; known: {sorted(backend.handlers)}")
    rq_queues = [jobs.rq_queue(kind) for kind in kinds]
    logger.info("RQ worker for %s (lease %.0f s)", ", ".join(q.name for q in rq_queues), jobs.lease_s)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # RQ installs its own
    try:
        if not burst:
            stop = threading.Event()
            threading.Thread(target=_sweeper, args=(jobs, poll_s, stop), name="job-sweeper", daemon=True).start()
            try:
                SimpleWorker(rq_queues, connection=jobs.rq_connection).work()
            finally:
                stop.set()
            return 0
        while True:
            jobs.sweep()
            SimpleWorker(rq_queues, connection=jobs.rq_connection).work(burst=True)
            if not jobs.active(kinds):
                return 0
            due = jobs.seconds_to_next()
            time.sleep(poll_s if due is None else min(max(due, 0.05), poll_s))
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _sweeper(jobs: RQJobQueue, poll_s: float, stop: threading.Event) -> None:
    while not stop.wait(poll_s):
        try:
            jobs.sweep()
        except redis.exceptions.RedisError:  # Redis restarting: the next sweep tries again
            logger.warning("job sweep failed", exc_info=True)
