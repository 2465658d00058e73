"""Background jobs that must never be lost: one SQLite row per (kind, project, key), run by one worker thread per process.

Kinds: ``masks`` (re-propagate a task's masks after a saved correction), ``complete`` (finish a long video's
prediction after the interactive answer), ``train`` (fine-tune on a project's approved masks); the key is the task
id (or the project for ``train``).

Label Studio gives a webhook 1 s, re-propagating masks takes longer: the webhook stores the job (a short write) and
answers; a worker claims it atomically (``BEGIN IMMEDIATE``, so two gunicorn workers never run one job twice),
runs it, and marks it done. A failure is logged and retried with exponential backoff; the row stays until the job
succeeds. A newer webhook for the same task replaces the payload (the newest annotation is what counts); if that
happens while the job runs, the job runs again. A running job's worker renews its claim (heartbeat every
`lease_s`/4); a claim not renewed for `lease_s` (its worker died) is taken over by another worker.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .sqlite import SQLiteFile

logger = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS background_jobs (
    kind TEXT NOT NULL, project TEXT NOT NULL, key TEXT NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL,                -- pending | running | done | failed (failed: GiveUp, kept for inspection)
    generation INTEGER NOT NULL,         -- +1 per enqueue: a job that finishes an older generation runs again
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    next_run REAL NOT NULL, claim TEXT, claimed_at REAL, updated REAL NOT NULL,
    progress REAL NOT NULL DEFAULT 0, message TEXT,   -- the running job's share done (0..1) and what it is doing
    PRIMARY KEY (kind, project, key));
CREATE INDEX IF NOT EXISTS background_jobs_due ON background_jobs (status, next_run);
"""


WHERE = "kind=? AND project=? AND key=?"
PROGRESS_EVERY_S = 0.5  # a running job's progress is stored at most this often


def _ids(job: Job) -> tuple[str, str, str]:
    return job.kind, job.project, job.key


def _public(row: sqlite3.Row) -> dict:
    return {k: row[k] for k in row.keys() if k not in ("payload", "claim")}


def backoff_delay(attempts: int, backoff_s: float, max_backoff_s: float) -> float:
    """Seconds before the next try of a job that failed its `attempts`-th try: doubling from backoff_s, capped."""
    return min(max_backoff_s, backoff_s * 2 ** max(attempts - 1, 0))


class GiveUp(Exception):
    """Raised by a handler when the job cannot succeed as it is (bad input): recorded as failed, not retried
    until a new enqueue for the same task."""


@dataclass(frozen=True)
class Job:
    kind: str
    project: str
    key: str  # the task id (the project for kind "train")
    payload: dict
    generation: int
    attempts: int  # including this one
    claim: str

    @property
    def task_id(self) -> str:
        return self.key

    @property
    def name(self) -> str:
        return f"{self.kind} {self.project}/{self.key}"


Progress = Callable[[float, str], None]  # (share done 0..1, what is being done): handlers report through it
Handler = Callable[[Job, Progress], None]


class JobQueue(SQLiteFile):
    """The jobs table. clock: seconds (injected in tests); backoff doubles from `backoff_s` up to `max_backoff_s`."""

    SCHEMA = SCHEMA

    def __init__(self, path: str | Path, lease_s: float = 60.0, backoff_s: float = 2.0, max_backoff_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.lease_s, self.backoff_s, self.max_backoff_s, self.clock = lease_s, backoff_s, max_backoff_s, clock
        super().__init__(path)

    def enqueue(self, project: str, key: str, payload: dict, kind: str = "masks") -> int:
        """Store (or replace) the job; returns its generation. A running job keeps running and reruns after."""
        now, ids = self.clock(), (kind, str(project), str(key))
        with self._write() as db:
            db.execute(
                "INSERT INTO background_jobs (kind, project, key, payload, status, generation, attempts, next_run, updated) "
                "VALUES (?, ?, ?, ?, 'pending', 1, 0, ?, ?) "
                "ON CONFLICT (kind, project, key) DO UPDATE SET payload=excluded.payload, generation=generation + 1, "
                "status=CASE WHEN status='running' THEN 'running' ELSE 'pending' END, "
                "attempts=CASE WHEN status='running' THEN attempts ELSE 0 END, next_run=excluded.next_run, updated=excluded.updated",
                (*ids, json.dumps(payload), now, now))
            return db.execute(f"SELECT generation FROM background_jobs WHERE {WHERE}", ids).fetchone()[0]

    def claim(self) -> Job | None:
        """Take the most overdue job (or one whose claim outlived the lease), or None."""
        now, token = self.clock(), uuid.uuid4().hex
        with self._write() as db:
            row = db.execute(
                "SELECT kind, project, key, payload, generation, attempts FROM background_jobs "
                "WHERE (status='pending' AND next_run<=?) OR (status='running' AND claimed_at<?) ORDER BY next_run LIMIT 1",
                (now, now - self.lease_s)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE background_jobs SET status='running', claim=?, claimed_at=?, attempts=attempts + 1, "
                       f"progress=0, message=NULL, updated=? WHERE {WHERE}", (token, now, now, *row[:3]))
        return Job(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5] + 1, token)

    def finish(self, job: Job) -> None:
        """Done, unless a newer payload arrived meanwhile: then it is due again at once."""
        now = self.clock()
        with self._write() as db:
            db.execute("UPDATE background_jobs SET status=CASE WHEN generation=? THEN 'done' ELSE 'pending' END, "
                       "attempts=CASE WHEN generation=? THEN attempts ELSE 0 END, last_error=NULL, next_run=?, claim=NULL, "
                       "progress=CASE WHEN generation=? THEN 1 ELSE 0 END, "
                       f"updated=? WHERE {WHERE} AND claim=?",
                       (job.generation, job.generation, now, job.generation, now, *_ids(job), job.claim))

    def renew(self, job: Job) -> bool:
        """Heartbeat of a running job: keeps other workers from taking it over; False once it was taken over."""
        with self._write() as db:
            cur = db.execute(f"UPDATE background_jobs SET claimed_at=? WHERE {WHERE} AND claim=?", (self.clock(), *_ids(job), job.claim))
            return cur.rowcount == 1

    def progress(self, job: Job, fraction: float, message: str = "") -> None:
        """Record how far the running job is (shown by /jobs); ignored once its claim was taken over."""
        with self._write() as db:
            db.execute(f"UPDATE background_jobs SET progress=?, message=?, updated=? WHERE {WHERE} AND claim=?",
                       (min(max(float(fraction), 0.0), 1.0), message[:500], self.clock(), *_ids(job), job.claim))

    def fail(self, job: Job, error: str, permanent: bool = False) -> float:
        """Record the error; retry after a backoff (or at once for a newer payload). Returns the delay in seconds."""
        now = self.clock()
        delay = backoff_delay(job.attempts, self.backoff_s, self.max_backoff_s)
        with self._write() as db:
            row = db.execute(f"SELECT generation FROM background_jobs WHERE {WHERE} AND claim=?",
                             (*_ids(job), job.claim)).fetchone()
            if row is None:
                return 0.0  # the claim was taken over: the other worker records its own outcome
            if row[0] != job.generation:
                status, attempts, delay = "pending", 0, 0.0
            else:
                status, attempts = ("failed" if permanent else "pending"), job.attempts
            db.execute("UPDATE background_jobs SET status=?, attempts=?, last_error=?, next_run=?, claim=NULL, updated=? "
                       f"WHERE {WHERE}", (status, attempts, error[:2000], now + delay, now, *_ids(job)))
        return delay

    def get(self, project: str, key: str, kind: str = "masks") -> dict | None:
        """The job's row (status, attempts, last_error, progress, ...), for /jobs and tests."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute(f"SELECT * FROM background_jobs WHERE {WHERE}", (kind, str(project), str(key))).fetchone()
        return _public(row) if row else None

    def list(self, limit: int = 100) -> list[dict]:
        """The most recently updated jobs first (GET /jobs)."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM background_jobs ORDER BY updated DESC LIMIT ?", (int(limit),)).fetchall()
        return [_public(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM background_jobs GROUP BY status").fetchall())

    def seconds_to_next(self) -> float | None:
        """Seconds until the next pending job is due (0 if overdue), None when nothing is pending."""
        with self._connect() as db:
            row = db.execute("SELECT MIN(next_run) FROM background_jobs WHERE status='pending'").fetchone()
        return None if row[0] is None else max(0.0, row[0] - self.clock())


class JobWorker:
    """One daemon thread per process running `handler(job, progress)` for claimed jobs; nothing it meets can kill
    the server. Progress goes to the jobs table (GET /jobs) and, every 10 %, to the log."""

    def __init__(self, queue: JobQueue, handler: Handler, poll_s: float = 1.0) -> None:
        self.queue = queue
        self.handler = handler
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread (once per process; again after a fork, whose child has no thread)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name=f"jobs-{os.getpid()}", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def reporter(self, job: Job) -> Progress:
        """The job's progress callback: stored at most every `PROGRESS_EVERY_S` (each store is a database write,
        engines report every frame) and always at 1.0; logged when it passes another 10 %."""
        logged, stored = [-1], [-float("inf")]

        def report(fraction: float, message: str = "") -> None:
            now = time.monotonic()
            if fraction >= 1.0 or now - stored[0] >= PROGRESS_EVERY_S:
                stored[0] = now
                try:
                    self.queue.progress(job, fraction, message)
                except Exception:  # progress is best effort: a busy database must not fail the job
                    logger.warning("job %s: cannot record progress", job.name, exc_info=True)
            step = int(min(max(fraction, 0.0), 1.0) * 10)
            if step > logged[0]:
                logged[0] = step
                logger.info("job %s: %3d%% %s", job.name, round(fraction * 100), message)

        return report

    def run_once(self) -> bool:
        """Claim and run one job; False when none was due."""
        job = self.queue.claim()
        if job is None:
            return False
        start = time.perf_counter()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, done), name=f"heartbeat-{os.getpid()}", daemon=True)
        beat.start()
        try:
            self.handler(job, self.reporter(job))
        except GiveUp as err:
            logger.warning("job %s gave up (attempt %d): %s", job.name, job.attempts, err)
            self.queue.fail(job, f"GiveUp: {err}", permanent=True)
        except Exception as err:  # any failure is retried later; the worker goes on
            logger.exception("job %s failed (attempt %d)", job.name, job.attempts)
            delay = self.queue.fail(job, f"{type(err).__name__}: {err}")
            logger.info("job %s will be retried in %.0f s", job.name, delay)
        else:
            self.queue.finish(job)
            logger.info("job %s done in %.1f s", job.name, time.perf_counter() - start)
        finally:
            done.set()
        return True

    def _heartbeat(self, job: Job, done: threading.Event) -> None:
        while not done.wait(self.queue.lease_s / 4):
            try:
                if not self.queue.renew(job):
                    logger.warning("job %s: claim taken over by another worker", job.name)
                    return
            except Exception:  # a busy database: the next beat tries again
                logger.warning("job %s: heartbeat failed", job.name, exc_info=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once():
                    continue
                due = self.queue.seconds_to_next()
            except Exception:  # a locked or broken database must not end the thread: try again later
                logger.exception("job worker: cannot read the jobs table")
                due = None
            self._wake.wait(self.poll_s if due is None else min(max(due, 0.05), self.poll_s))
            self._wake.clear()
