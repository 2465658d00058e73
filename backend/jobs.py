"""Background jobs that must never be lost: one SQLite row per (project, task), run by one worker thread per process.

Label Studio gives a webhook 1 s, re-propagating masks takes longer: the webhook stores the job (a short write) and
answers; a worker claims it atomically (``BEGIN IMMEDIATE``, so two gunicorn workers never run one job twice),
runs it, and marks it done. A failure is logged and retried with exponential backoff; the row stays until the job
succeeds. A newer webhook for the same task replaces the payload (the newest annotation is what counts); if that
happens while the job runs, the job runs again. A claim whose worker died is taken over after `lease_s`.
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
CREATE TABLE IF NOT EXISTS jobs (
    project TEXT NOT NULL, task_id TEXT NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL,                -- pending | running | done | failed (failed: GiveUp, kept for inspection)
    generation INTEGER NOT NULL,         -- +1 per enqueue: a job that finishes an older generation runs again
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    next_run REAL NOT NULL, claim TEXT, claimed_at REAL, updated REAL NOT NULL,
    PRIMARY KEY (project, task_id));
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, next_run);
"""


class GiveUp(Exception):
    """Raised by a handler when the job cannot succeed as it is (bad input): recorded as failed, not retried
    until a new enqueue for the same task."""


@dataclass(frozen=True)
class Job:
    project: str
    task_id: str
    payload: dict
    generation: int
    attempts: int  # including this one
    claim: str


class JobQueue(SQLiteFile):
    """The jobs table. clock: seconds (injected in tests); backoff doubles from `backoff_s` up to `max_backoff_s`."""

    SCHEMA = SCHEMA

    def __init__(self, path: str | Path, lease_s: float = 600.0, backoff_s: float = 2.0, max_backoff_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.lease_s, self.backoff_s, self.max_backoff_s, self.clock = lease_s, backoff_s, max_backoff_s, clock
        super().__init__(path)

    def enqueue(self, project: str, task_id: str, payload: dict) -> int:
        """Store (or replace) the task's job; returns its generation. A running job keeps running and reruns after."""
        now = self.clock()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (project, task_id, payload, status, generation, attempts, next_run, updated) "
                "VALUES (?, ?, ?, 'pending', 1, 0, ?, ?) "
                "ON CONFLICT (project, task_id) DO UPDATE SET payload=excluded.payload, generation=generation + 1, "
                "status=CASE WHEN status='running' THEN 'running' ELSE 'pending' END, "
                "attempts=CASE WHEN status='running' THEN attempts ELSE 0 END, next_run=excluded.next_run, updated=excluded.updated",
                (str(project), str(task_id), json.dumps(payload), now, now))
            return db.execute("SELECT generation FROM jobs WHERE project=? AND task_id=?", (str(project), str(task_id))).fetchone()[0]

    def claim(self) -> Job | None:
        """Take the most overdue job (or one whose claim outlived the lease), or None."""
        now, token = self.clock(), uuid.uuid4().hex
        with self._write() as db:
            row = db.execute(
                "SELECT project, task_id, payload, generation, attempts FROM jobs "
                "WHERE (status='pending' AND next_run<=?) OR (status='running' AND claimed_at<?) ORDER BY next_run LIMIT 1",
                (now, now - self.lease_s)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status='running', claim=?, claimed_at=?, attempts=attempts + 1, updated=? "
                       "WHERE project=? AND task_id=?", (token, now, now, row[0], row[1]))
        return Job(row[0], row[1], json.loads(row[2]), row[3], row[4] + 1, token)

    def finish(self, job: Job) -> None:
        """Done, unless a newer payload arrived meanwhile: then it is due again at once."""
        now = self.clock()
        with self._write() as db:
            db.execute("UPDATE jobs SET status=CASE WHEN generation=? THEN 'done' ELSE 'pending' END, "
                       "attempts=CASE WHEN generation=? THEN attempts ELSE 0 END, last_error=NULL, next_run=?, claim=NULL, "
                       "updated=? WHERE project=? AND task_id=? AND claim=?",
                       (job.generation, job.generation, now, now, job.project, job.task_id, job.claim))

    def fail(self, job: Job, error: str, permanent: bool = False) -> float:
        """Record the error; retry after a backoff (or at once for a newer payload). Returns the delay in seconds."""
        now = self.clock()
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** max(job.attempts - 1, 0))
        with self._write() as db:
            row = db.execute("SELECT generation FROM jobs WHERE project=? AND task_id=? AND claim=?",
                             (job.project, job.task_id, job.claim)).fetchone()
            if row is None:
                return 0.0  # the claim was taken over: the other worker records its own outcome
            if row[0] != job.generation:
                status, attempts, delay = "pending", 0, 0.0
            else:
                status, attempts = ("failed" if permanent else "pending"), job.attempts
            db.execute("UPDATE jobs SET status=?, attempts=?, last_error=?, next_run=?, claim=NULL, updated=? "
                       "WHERE project=? AND task_id=?", (status, attempts, error[:2000], now + delay, now, job.project, job.task_id))
        return delay

    def get(self, project: str, task_id: str) -> dict | None:
        """The job's row (status, attempts, last_error, ...), for the status route and tests."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM jobs WHERE project=? AND task_id=?", (str(project), str(task_id))).fetchone()
        return {k: row[k] for k in row.keys() if k != "payload"} if row else None

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def seconds_to_next(self) -> float | None:
        """Seconds until the next pending job is due (0 if overdue), None when nothing is pending."""
        with self._connect() as db:
            row = db.execute("SELECT MIN(next_run) FROM jobs WHERE status='pending'").fetchone()
        return None if row[0] is None else max(0.0, row[0] - self.clock())


class JobWorker:
    """One daemon thread per process running `handler(job)` for claimed jobs; nothing it meets can kill the server."""

    def __init__(self, queue: JobQueue, handler: Callable[[Job], None], poll_s: float = 1.0) -> None:
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

    def run_once(self) -> bool:
        """Claim and run one job; False when none was due."""
        job = self.queue.claim()
        if job is None:
            return False
        start = time.perf_counter()
        try:
            self.handler(job)
        except GiveUp as err:
            logger.warning("job %s/%s gave up (attempt %d): %s", job.project, job.task_id, job.attempts, err)
            self.queue.fail(job, f"GiveUp: {err}", permanent=True)
        except Exception as err:  # any failure is retried later; the worker goes on
            logger.exception("job %s/%s failed (attempt %d)", job.project, job.task_id, job.attempts)
            delay = self.queue.fail(job, f"{type(err).__name__}: {err}")
            logger.info("job %s/%s will be retried in %.0f s", job.project, job.task_id, delay)
        else:
            self.queue.finish(job)
            logger.info("job %s/%s done in %.1f s", job.project, job.task_id, time.perf_counter() - start)
        return True

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
