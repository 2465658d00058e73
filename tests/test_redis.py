"""Redis mode (REDIS_URL): the Redis store behaves as the SQLite one, job records keep JobQueue's semantics, RQ workers
run them (in-process bursts, and real worker processes SIGKILLed mid-job), apps share state. One real redis-server on
loopback; skipped with the reason when redis-server or the redis/rq packages are missing."""
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

redis = pytest.importorskip("redis", reason="Redis mode needs the redis and rq packages: pip install redis rq")
pytest.importorskip("rq", reason="Redis mode needs the redis and rq packages: pip install redis rq")

from scribblebox.backend.jobs import GiveUp, JobQueue
from scribblebox.backend.redis_state import RedisTrackStore
from scribblebox.backend.rq_jobs import NoThread, RQJobQueue, run_worker
from scribblebox.backend.server import create_app
from scribblebox.backend.state import MaskState, RegionState, TrackStore
from scribblebox.models.track import Keyframe, TrackResult
from test_server import CONFIG, FakeEngine, fake_opener, predict_body, region, task

from scribblebox.settings import ServerSettings, Settings

A = Keyframe.of(0, [10, 10, 50, 40])
B = Keyframe.of(20, [30, 12, 50, 40])
C = Keyframe.of(40, [60, 14, 50, 40], enabled=False)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server): Redis-mode tests skipped")
    folder = tmp_path_factory.mktemp("redis")
    with socket.socket() as s:  # a free loopback port (redis-server --port 0 would mean "no TCP")
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (folder / "redis.log").open("w")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture()
def url(redis_server):
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


# --- the store: same behaviour as TrackStore -------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return TrackStore(tmp_path / "state.sqlite3")
    return RedisTrackStore.from_url(request.getfixturevalue("url"))


def test_store_regions_round_trip_delete_and_list(store):
    state = RegionState("/data/upload/1/a.mp4", anchors=[A], answered=[A, B, C], result={"num_frames": 50, "keyframes": []},
                        label="Person")
    assert store.get("1", "7", "r1") is None and store.list_task("1", "7") == {}
    store.put("1", "7", "r2", RegionState("/data/upload/1/a.mp4"))
    store.put("1", "7", "r1", state)
    store.put("1", "8", "r1", RegionState("/data/upload/1/b.mp4"))
    store.put("1", "8", "r2", RegionState("/data/upload/1/b.mp4"))
    got = store.get("1", "7", "r1")
    assert got == state and got.answered[2].enabled is False and got.label == "Person"
    assert list(store.list_task("1", "7")) == ["r1", "r2"] and store.list_task("1", "7")["r1"] == state
    assert store.delete("1", "7", "r2") == 1 and store.get("1", "7", "r2") is None
    assert store.delete("1", "7", "nope") == 0
    assert store.delete("1", "8") == 2 and store.list_task("1", "8") == {} and store.delete("1", "8") == 0
    assert store.get("2", "7", "r1") is None, "projects are separate"
    store.put("1:2", "3", "r", RegionState("x"))  # ids with the key separator do not collide
    assert store.get("1", "2:3", "r") is None and store.get("1:2", "3", "r").video_key == "x"


def test_store_masks_round_trip(store):
    rng = np.random.default_rng(0)
    masks = {f: rng.random((30, 41)) > 0.5 for f in (0, 7)}
    state = MaskState("/data/upload/1/a.mp4", (30, 41), approved={3: rng.random((30, 41)) > 0.2})
    state.remember(masks)
    assert store.get_masks("1", "7", "Person") is None and store.mask_objects("1", "7") == []
    store.put_masks("1", "7", "Person", state)
    store.put_masks("1", "7", "Car", MaskState("v", (2, 2)))
    got = store.get_masks("1", "7", "Person")
    assert got.shape == (30, 41) and got.video_key == state.video_key and got.seen == state.seen
    assert all(np.array_equal(got.predicted[f], masks[f]) for f in masks) and sorted(got.predicted) == [0, 7]
    assert np.array_equal(got.approved[3], state.approved[3])
    assert store.mask_objects("1", "7") == ["Car", "Person"] and store.mask_objects("1", "8") == []


def test_store_label_configs(store):
    assert store.get_label_config("3") is None
    store.put_label_config("3", "<View/>")
    store.put_label_config("3", CONFIG)
    assert store.get_label_config("3") == CONFIG and store.get_label_config("4") is None


# --- job records: JobQueue's semantics -------------------------------------------------------------------------------

def test_enqueue_claim_finish_and_one_wakeup(url, tmp_path):
    queue = RQJobQueue.from_url(url, clock=Clock())
    assert queue.claim("masks", "1", "7") is None and queue.seconds_to_next() is None and queue.list() == []
    assert queue.enqueue("1", "7", {"n": 1}) == 1
    assert queue.enqueue("1", "7", {"n": 2}) == 2, "a newer payload replaces the older"
    assert queue.rq_queue("masks").count == 1, "one wake-up while one is waiting"
    job = queue.claim("masks", "1", "7")
    assert (job.project, job.task_id, job.payload, job.attempts, job.generation) == ("1", "7", {"n": 2}, 1, 2)
    assert queue.claim("masks", "1", "7") is None, "a running job is not handed out twice"
    assert queue.finish(job) == "done" and queue.get("1", "7")["status"] == "done"
    sqlite = JobQueue(tmp_path / "s.db")
    sqlite.enqueue("1", "7", {})
    assert set(queue.get("1", "7")) == set(sqlite.get("1", "7")), "the same public fields as the SQLite queue"
    assert queue.get("1", "7")["progress"] == 1.0 and queue.get("1", "7")["generation"] == 2
    assert queue.enqueue("1", "7", {"n": 3}) == 3 and queue.claim("masks", "1", "7").payload == {"n": 3}


def test_failures_back_off_exponentially_and_the_job_stays(url):
    clock = Clock()
    queue = RQJobQueue.from_url(url, backoff_s=2, max_backoff_s=10, clock=clock)
    queue.enqueue("1", "7", {})
    delays = []
    for _ in range(5):
        job = queue.claim("masks", "1", "7")
        assert job is not None
        delays.append(queue.fail(job, "boom"))
        row = queue.get("1", "7")
        assert row["status"] == "pending" and row["last_error"] == "boom"
        assert queue.claim("masks", "1", "7") is None, "not due before its backoff"
        assert queue.seconds_to_next() == pytest.approx(delays[-1])
        clock.now += delays[-1]
    assert delays == [2, 4, 8, 10, 10]
    job = queue.claim("masks", "1", "7")
    assert job.attempts == 6
    queue.finish(job)
    assert queue.get("1", "7")["status"] == "done" and queue.get("1", "7")["last_error"] is None


def test_new_payload_while_running_runs_again_and_give_up_is_kept(url):
    queue = RQJobQueue.from_url(url, clock=Clock())
    queue.enqueue("1", "7", {"v": "old"})
    job = queue.claim("masks", "1", "7")
    queue.enqueue("1", "7", {"v": "new"})
    assert queue.get("1", "7")["status"] == "running"
    assert queue.finish(job) == "pending"
    again = queue.claim("masks", "1", "7")
    assert again.payload == {"v": "new"} and again.attempts == 1
    queue.enqueue("1", "7", {"v": "newer"})
    assert queue.fail(again, "boom") == 0.0, "a failure of an older generation does not delay the newer one"
    last = queue.claim("masks", "1", "7")
    assert last.payload == {"v": "newer"}
    queue.fail(last, "GiveUp: no box", permanent=True)
    assert queue.get("1", "7")["status"] == "failed" and queue.claim("masks", "1", "7") is None
    assert queue.counts() == {"failed": 1}
    queue.enqueue("1", "7", {"fixed": True})
    assert queue.counts() == {"pending": 1} and queue.claim("masks", "1", "7").payload == {"fixed": True}


def test_a_dead_workers_claim_is_taken_over_after_the_lease(url):
    clock = Clock()
    queue = RQJobQueue.from_url(url, lease_s=60, clock=clock)
    queue.enqueue("1", "7", {})
    dead = queue.claim("masks", "1", "7")
    clock.now += 30
    assert queue.renew(dead) and queue.claim("masks", "1", "7") is None
    clock.now += 61
    alive = queue.claim("masks", "1", "7")
    assert alive is not None and alive.attempts == 2
    assert queue.finish(dead) is None and not queue.renew(dead), "the old claim's late answer changes nothing"
    queue.progress(dead, 0.9, "late")
    assert queue.get("1", "7")["status"] == "running" and queue.get("1", "7")["message"] is None
    queue.finish(alive)
    assert queue.get("1", "7")["status"] == "done"


def test_sweep_wakes_due_and_stale_jobs_once(url):
    clock = Clock()
    queue = RQJobQueue.from_url(url, lease_s=60, backoff_s=2, clock=clock)
    rq_queue = queue.rq_queue("masks")
    queue.enqueue("1", "7", {})
    assert queue.sweep() == 0 and rq_queue.count == 1, "its wake-up is waiting"
    rq_queue.empty()  # the wake-up was lost (queue emptied by hand): found again once a lease passed
    assert queue.sweep() == 0
    clock.now += 61
    assert queue.sweep() == 1 and queue.sweep() == 0 and rq_queue.count == 1
    rq_queue.empty()
    queue.fail(queue.claim("masks", "1", "7"), "boom")
    assert queue.sweep() == 0, "not due during its backoff"
    clock.now += 2
    assert queue.sweep() == 1 and queue.sweep() == 0
    rq_queue.empty()
    queue.claim("masks", "1", "7")
    clock.now += 59
    assert queue.sweep() == 0, "a running job within its lease is left alone"
    clock.now += 2
    assert queue.sweep() == 1 and queue.sweep() == 0 and rq_queue.count == 1


# --- RQ workers --------------------------------------------------------------------------------------------------

def burst(url, tmp_path, handlers, lease_s=60.0, backoff_s=None):
    settings = Settings(server=ServerSettings(data_dir=str(tmp_path / "var"), job_lease_s=lease_s))

    def setup(backend):
        backend.handlers.update(handlers)
        if backoff_s is not None:
            backend.jobs.backoff_s = backoff_s

    return run_worker(settings, {"REDIS_URL": url}, sorted(handlers), burst=True, setup=setup, poll_s=0.05)


def test_worker_runs_the_newest_payload_once(url, tmp_path):
    web = RQJobQueue.from_url(url)
    calls = []
    web.enqueue("1", "7", {"v": 1}, kind="complete")
    web.enqueue("1", "7", {"v": 2}, kind="complete")
    web.enqueue("1", "8", {"v": 3}, kind="complete")
    assert burst(url, tmp_path, {"complete": lambda job, progress: calls.append((job.key, job.payload))}) == 0
    assert sorted(calls) == [("7", {"v": 2}), ("8", {"v": 3})]
    assert web.get("1", "7", "complete")["status"] == "done" and web.counts() == {"done": 2}


def test_a_payload_arriving_while_running_runs_again(url, tmp_path):
    web = RQJobQueue.from_url(url)
    calls = []

    def handler(job, progress):
        calls.append((job.payload, job.generation, job.attempts))
        if len(calls) == 1:
            web.enqueue("1", "7", {"v": "saved again"})  # the user saves while the old annotation is processed

    web.enqueue("1", "7", {"v": "first"})
    burst(url, tmp_path, {"masks": handler})
    assert calls == [({"v": "first"}, 1, 1), ({"v": "saved again"}, 2, 1)]
    assert web.get("1", "7")["status"] == "done"


def test_a_failing_job_is_retried_with_backoff_then_done_and_give_up_is_failed(url, tmp_path, caplog):
    web = RQJobQueue.from_url(url)
    seen = []

    def handler(job, progress):
        seen.append((job.key, job.attempts, time.monotonic()))
        if job.key == "bad":
            raise GiveUp("no box track labelled 'Person'")
        if job.attempts < 3:
            raise RuntimeError("Label Studio is down")

    web.enqueue("1", "flaky", {})
    web.enqueue("1", "bad", {})
    burst(url, tmp_path, {"masks": handler}, backoff_s=0.2)
    flaky = [t for key, _, t in seen if key == "flaky"]
    assert [a for key, a, _ in seen if key == "flaky"] == [1, 2, 3]
    assert flaky[1] - flaky[0] >= 0.2 and flaky[2] - flaky[1] >= 0.4, "exponential backoff between attempts"
    assert web.get("1", "flaky")["status"] == "done" and web.get("1", "flaky")["last_error"] is None
    assert [a for key, a, _ in seen if key == "bad"] == [1], "GiveUp is not retried"
    bad = web.get("1", "bad")
    assert bad["status"] == "failed" and "no box track" in bad["last_error"] and "Label Studio is down" in caplog.text


def test_progress_is_visible_in_the_job_list_while_running(url, tmp_path):
    web = RQJobQueue.from_url(url)
    listed = []

    def handler(job, progress):
        progress(0.4, "frames 40/100")
        listed.extend(web.list())

    web.enqueue("1", "7", {}, kind="train")
    burst(url, tmp_path, {"train": handler})
    (row,) = listed
    assert (row["kind"], row["status"], row["progress"], row["message"]) == ("train", "running", 0.4, "frames 40/100")
    assert "payload" not in row and "claim" not in row
    assert web.list()[0]["progress"] == 1.0 and web.list()[0]["status"] == "done"


def test_worker_refuses_kinds_without_handler(url, tmp_path):
    settings = Settings(server=ServerSettings(data_dir=str(tmp_path / "var")))
    with pytest.raises(ValueError, match="no handler for job kind"):
        run_worker(settings, {"REDIS_URL": url}, ["nope"], burst=True)
    with pytest.raises(RuntimeError, match="REDIS_URL"):
        run_worker(settings, {}, ["masks"], burst=True)


# --- apps (gunicorn workers) sharing one Redis -------------------------------------------------------------------

def test_two_apps_share_state_and_jobs_through_redis(url, tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "walk.mp4").write_bytes(b"not decoded by the fake opener")
    settings = Settings(server=ServerSettings(data_dir=str(tmp_path / "var")))
    env = {"REDIS_URL": url, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}
    engines = FakeEngine(), FakeEngine()
    apps = [create_app(settings, engine=e, env=env, opener=fake_opener) for e in engines]
    one, two = (app.test_client() for app in apps)
    backend = apps[0].extensions["scribblebox"]
    assert isinstance(backend.predictor.store, RedisTrackStore) and isinstance(backend.worker, NoThread)
    assert one.post("/setup", json={"project": "1.1735725600", "schema": CONFIG}).status_code == 200
    assert apps[1].extensions["scribblebox"].predictor.store.get_label_config("1") == CONFIG
    first = one.post("/predict", json=predict_body([task()], {"result": [region(frame=5)]})).json["results"][0]["result"][0]
    edited = copy.deepcopy(first)
    edited["value"]["sequence"][1]["x"] += 10
    assert two.post("/predict", json=predict_body([task()], {"result": [edited]})).status_code == 200
    anchors, previous = engines[1].calls[0]
    assert [k.frame for k in anchors] == [4, 14], "the second app sees the first app's answer"
    assert isinstance(previous, TrackResult) and previous.keyframes[0].frame == 4
    assert not (tmp_path / "var" / "state.sqlite3").exists()

    assert backend.enqueue("masks", "1", "7", {"from": "app one"}) == 1
    assert two.get("/jobs").json["counts"] == {"pending": 1} and two.get("/metrics").json["jobs"] == {"pending": 1}
    ran = []
    burst(url, tmp_path, {"masks": lambda job, progress: ran.append(job.payload)})
    assert ran == [{"from": "app one"}]
    (row,) = one.get("/jobs").json["jobs"]
    assert (row["kind"], row["project"], row["key"], row["status"]) == ("masks", "1", "7", "done")


# --- a real worker process killed mid-job ------------------------------------------------------------------------

WORKER = """
import json, os, sys, time
from scribblebox.backend.rq_jobs import run_worker
from scribblebox.settings import ServerSettings, Settings

log, data_dir, mode = sys.argv[1:4]

def slow(job, progress):
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "attempts": job.attempts, "payload": job.payload}) + "\\n")
    progress(0.5, "working")
    if job.attempts == 1:
        time.sleep(120)  # killed here

settings = Settings(server=ServerSettings(data_dir=data_dir, job_lease_s=1.0))
sys.exit(run_worker(settings, os.environ, ["slow"], burst=mode == "burst", setup=lambda b: b.handlers.update(slow=slow),
                    poll_s=0.2))
"""


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_worker_killed_mid_job_is_replaced_and_the_job_runs_again(url, tmp_path):
    script, log = tmp_path / "worker.py", tmp_path / "runs.jsonl"
    script.write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(REPO)}
    payload = {"frames": [1, 2, 3], "annotation": {"id": 11}}
    web = RQJobQueue.from_url(url)
    web.enqueue("1", "7", payload, kind="slow")
    first = subprocess.Popen([sys.executable, str(script), str(log), str(tmp_path / "a"), "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 40
        while not _lines(log) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert _lines(log), "the first worker never started the job"
        row = web.get("1", "7", "slow")
        assert (row["status"], row["progress"], row["message"]) == ("running", 0.5, "working")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert web.get("1", "7", "slow")["status"] == "running", "the dead worker's job is left running"
    second = subprocess.run([sys.executable, str(script), str(log), str(tmp_path / "b"), "burst"], env=env, check=False,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = _lines(log)
    assert [r["attempts"] for r in runs] == [1, 2] and runs[0]["pid"] != runs[1]["pid"]
    assert runs[0]["payload"] == runs[1]["payload"] == payload, "the payload is intact"
    row = web.get("1", "7", "slow")
    assert (row["status"], row["attempts"], row["progress"]) == ("done", 2, 1.0)
