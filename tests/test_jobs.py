"""Persistent background jobs: claimed once, retried with backoff, never lost, never fatal to the worker."""
import multiprocessing
import threading
import time

import pytest

from scribblebox.backend.jobs import GiveUp, JobQueue, JobWorker


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_enqueue_claim_finish(tmp_path):
    clock = Clock()
    queue = JobQueue(tmp_path / "s.db", clock=clock)
    assert queue.claim() is None and queue.seconds_to_next() is None
    assert queue.enqueue("1", "7", {"n": 1}) == 1
    job = queue.claim()
    assert (job.project, job.task_id, job.payload, job.attempts) == ("1", "7", {"n": 1}, 1)
    assert queue.claim() is None, "a running job is not handed out twice"
    queue.finish(job)
    assert queue.get("1", "7")["status"] == "done" and queue.claim() is None
    assert queue.enqueue("1", "7", {"n": 2}) == 2, "a new payload for a done job makes it due again"
    assert queue.claim().payload == {"n": 2}


def test_failures_back_off_exponentially_and_the_job_stays(tmp_path):
    clock = Clock()
    queue = JobQueue(tmp_path / "s.db", backoff_s=2, max_backoff_s=10, clock=clock)
    queue.enqueue("1", "7", {})
    delays = []
    for _ in range(5):
        job = queue.claim()
        assert job is not None
        delays.append(queue.fail(job, "boom"))
        row = queue.get("1", "7")
        assert row["status"] == "pending" and row["last_error"] == "boom"
        assert queue.claim() is None, "not due before its backoff"
        assert queue.seconds_to_next() == pytest.approx(delays[-1])
        clock.now += delays[-1]
    assert delays == [2, 4, 8, 10, 10]
    job = queue.claim()
    assert job.attempts == 6
    queue.finish(job)
    assert queue.get("1", "7")["status"] == "done" and queue.get("1", "7")["last_error"] is None


def test_new_payload_while_running_runs_again(tmp_path):
    queue = JobQueue(tmp_path / "s.db", clock=Clock())
    queue.enqueue("1", "7", {"v": "old"})
    job = queue.claim()
    queue.enqueue("1", "7", {"v": "new"})  # the user saved again while the old annotation was being processed
    assert queue.get("1", "7")["status"] == "running"
    queue.finish(job)
    again = queue.claim()
    assert again is not None and again.payload == {"v": "new"} and again.attempts == 1
    # A failure of the old generation does not delay the newer one either.
    queue.enqueue("1", "7", {"v": "newer"})
    assert queue.fail(again, "boom") == 0.0
    assert queue.claim().payload == {"v": "newer"}


def test_give_up_is_kept_as_failed_until_reenqueued(tmp_path):
    queue = JobQueue(tmp_path / "s.db", clock=Clock())
    queue.enqueue("1", "7", {})
    queue.fail(queue.claim(), "GiveUp: no box", permanent=True)
    assert queue.get("1", "7")["status"] == "failed" and queue.claim() is None
    assert queue.counts() == {"failed": 1}
    queue.enqueue("1", "7", {"fixed": True})
    assert queue.claim().payload == {"fixed": True}


def test_a_dead_workers_claim_is_taken_over_after_the_lease(tmp_path):
    clock = Clock()
    queue = JobQueue(tmp_path / "s.db", lease_s=60, clock=clock)
    queue.enqueue("1", "7", {})
    dead = queue.claim()
    clock.now += 30
    assert queue.claim() is None
    clock.now += 31
    alive = queue.claim()
    assert alive is not None and alive.attempts == 2
    queue.finish(dead)  # the old claim's late answer changes nothing
    assert queue.get("1", "7")["status"] == "running"
    queue.finish(alive)
    assert queue.get("1", "7")["status"] == "done"


def test_jobs_survive_a_restart(tmp_path):
    JobQueue(tmp_path / "s.db").enqueue("1", "7", {"keep": 1})
    assert JobQueue(tmp_path / "s.db").claim().payload == {"keep": 1}


def _claim_all(path, out):
    queue = JobQueue(path)
    got = []
    while (job := queue.claim()) is not None:
        got.append(job.task_id)
        queue.finish(job)
    out.put(got)


def test_two_processes_never_claim_the_same_job(tmp_path):
    path = tmp_path / "s.db"
    queue = JobQueue(path)
    for i in range(40):
        queue.enqueue("1", str(i), {})
    out = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_claim_all, args=(path, out)) for _ in range(2)]
    for p in procs:
        p.start()
    claimed = out.get(timeout=60) + out.get(timeout=60)
    for p in procs:
        p.join(30)
    assert sorted(claimed, key=int) == [str(i) for i in range(40)]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_worker_retries_a_failing_job_and_survives(tmp_path, caplog):
    queue = JobQueue(tmp_path / "s.db", backoff_s=0.05, max_backoff_s=0.1)
    calls = []

    def handler(job, progress):
        calls.append(job.attempts)
        if len(calls) < 3:
            raise RuntimeError("Label Studio is down")

    worker = JobWorker(queue, handler, poll_s=0.05)
    worker.start()
    try:
        queue.enqueue("1", "7", {})
        worker.wake()
        assert wait_for(lambda: (queue.get("1", "7") or {}).get("status") == "done")
        assert calls == [1, 2, 3]
        assert "Label Studio is down" in caplog.text
        queue.enqueue("1", "8", {})  # the thread is still alive and serves the next job
        assert wait_for(lambda: (queue.get("1", "8") or {}).get("status") == "done")
    finally:
        worker.stop()


def test_worker_records_give_up_and_goes_on(tmp_path):
    queue = JobQueue(tmp_path / "s.db")

    def handler(job, progress):
        if job.task_id == "bad":
            raise GiveUp("no box track labelled 'Person'")

    worker = JobWorker(queue, handler, poll_s=0.05)
    queue.enqueue("1", "bad", {})
    queue.enqueue("1", "good", {})
    assert worker.run_once() and worker.run_once() and not worker.run_once()
    assert queue.get("1", "bad")["status"] == "failed" and "no box track" in queue.get("1", "bad")["last_error"]
    assert queue.get("1", "good")["status"] == "done"


def test_worker_start_is_idempotent_and_stops(tmp_path):
    worker = JobWorker(JobQueue(tmp_path / "s.db"), lambda job, progress: None, poll_s=0.05)
    before = set(threading.enumerate())
    worker.start()
    thread = worker._thread
    worker.start()
    assert worker._thread is thread and len(set(threading.enumerate()) - before) == 1
    worker.stop()
    assert not thread.is_alive()


def test_kinds_are_separate_jobs_and_progress_is_listed(tmp_path):
    clock = Clock()
    queue = JobQueue(tmp_path / "s.db", clock=clock)
    queue.enqueue("1", "7", {"m": 1})
    queue.enqueue("1", "7", {"c": 1}, kind="complete")
    assert queue.get("1", "7")["status"] == queue.get("1", "7", kind="complete")["status"] == "pending"
    job = queue.claim()
    clock.now += 1
    queue.progress(job, 0.4, "frames 40/100")
    row = queue.get("1", "7", kind=job.kind)
    assert (row["progress"], row["message"], row["status"]) == (0.4, "frames 40/100", "running")
    listed = queue.list()
    assert [r["kind"] for r in listed][0] == job.kind and len(listed) == 2
    assert all("payload" not in r and "claim" not in r for r in listed)
    queue.finish(job)
    assert queue.get("1", "7", kind=job.kind)["progress"] == 1.0


def test_worker_reports_progress_and_logs_every_tenth(tmp_path, caplog):
    queue = JobQueue(tmp_path / "s.db")
    seen = []

    def handler(job, progress):
        for i in range(101):
            progress(i / 100, f"frame {i}")
        seen.append(queue.get(job.project, job.key, job.kind)["progress"])

    queue.enqueue("1", "7", {}, kind="complete")
    writes = []
    store = queue.progress
    queue.progress = lambda job, fraction, message="": (writes.append(fraction), store(job, fraction, message))
    caplog.set_level("INFO")
    assert JobWorker(queue, handler).run_once()
    assert seen == [1.0]
    assert writes[0] == 0.0 and writes[-1] == 1.0 and len(writes) < 10, "stored at most every 0.5 s, and at 1.0"
    assert sum("job complete 1/7:" in r.getMessage() for r in caplog.records) == 11


def test_heartbeat_keeps_a_long_job_from_being_taken_over(tmp_path):
    queue = JobQueue(tmp_path / "s.db", lease_s=0.4)
    other = JobQueue(tmp_path / "s.db", lease_s=0.4)
    stolen = []

    def handler(job, progress):
        deadline = time.monotonic() + 1.5  # several leases long
        while time.monotonic() < deadline:
            stolen.append(other.claim())
            time.sleep(0.1)

    queue.enqueue("1", "7", {})
    assert JobWorker(queue, handler).run_once()
    assert stolen and not any(stolen), "a live job's claim was taken over"
    assert queue.get("1", "7")["status"] == "done"
