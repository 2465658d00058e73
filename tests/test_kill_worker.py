"""Issue #6 fault: the gunicorn worker running a mask job is SIGKILLed mid-job -> gunicorn starts a new worker,
another worker (the new one, or the other one if its job thread runs) takes the job over once the claim's lease
(SCRIBBLEBOX_JOB_LEASE_S=3) runs out, the job ends `done`, Label Studio gets the prediction, and the saved
correction is in the stored state and in the prediction.

Real server (`python -m scribblebox.cli serve --workers 2`, its own process group), real engine and H.264 file; Label
Studio is a stub HTTP server on loopback that serves GET /api/tasks/7 and holds the FIRST POST /api/predictions
open, so the job is deterministically `running` (its masks computed, nothing stored yet) when the worker is killed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from scribblebox.backend.label_studio.brush import decode_mask, encode_mask
from scribblebox.backend.state import TrackStore
from scribblebox.models.synthetic import make_moving_box_video
from stub_http import StubHandler

CONFIG = resources.files("scribblebox.config").joinpath("label_studio/video_masks.xml").read_text()
W, H, N, FPS = 160, 120, 20, 25
TASK, LABEL, FIXED_ITEM = 7, "Person", 10
TOKEN = "0123456789abcdef0123456789abcdef01234567"
DEADLINE_S = 60.0
LEASE_S = 3


class StubLabelStudio(StubHandler):
    """GET /api/tasks/7 -> the task; POST /api/predictions -> recorded in `posts`; the first one is held until
    `release` (its sender is killed meanwhile), the others are answered 201 and also recorded in `answered`."""

    task: dict = {}
    posts: list = []
    answered: list = []
    held = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path.rstrip("/") == f"/api/tasks/{TASK}":
            self.reply(200, self.task)
        elif self.path == f"/api/predictions?task={TASK}":  # what Label Studio stored: the held post never was
            self.reply(200, self.answered)
        else:
            self.reply(404, {"detail": "not found"})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/api/predictions":
            self.reply(404, {"detail": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posts.append(body)
        first = len(self.posts) == 1
        if first:
            self.held.set()
            self.release.wait(DEADLINE_S)  # the worker that sent it is killed meanwhile
        try:
            self.reply(201, {"id": len(self.posts), "task": body.get("task")})
        except OSError:  # the killed worker's connection is gone
            return
        if not first:  # the held answer never reaches anyone, even when the write to the dead socket succeeds
            self.answered.append(body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> set[int]:
    """Live children of `pid` (gunicorn's workers)."""
    out = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def box_region(truth: np.ndarray) -> dict:
    """The object's box track as Label Studio saves it: keyframes on the first and the last frame."""
    def kf(frame: int) -> dict:
        x, y, w, h = truth[frame - 1]
        return {"frame": frame, "x": x / W * 100, "y": y / H * 100, "width": w / W * 100, "height": h / H * 100,
                "rotation": 0, "enabled": True, "time": (frame - 1) / FPS}

    return {"id": "box1", "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": N, "duration": N / FPS, "labels": [LABEL], "sequence": [kf(1), kf(N)]}}


def correction_mask(box: np.ndarray) -> np.ndarray:
    """The user's brush edit: an ellipse inside the object's box (a shape no engine answer would be)."""
    mask = np.zeros((H, W), np.uint8)
    x, y, w, h = box
    cv2.ellipse(mask, (int(x + w / 2), int(y + h / 2)), (int(w * 0.4), int(h * 0.35)), 0, 0, 360, 1, -1)
    return mask.astype(bool)


@pytest.fixture()
def world(tmp_path):
    """The video, the stub Label Studio and the backend (gunicorn, 2 workers); everything is stopped afterwards."""
    media = tmp_path / "media"
    truth = make_moving_box_video(media / "walk.mp4", num_frames=N, size=(W, H), fps=FPS, start=(40, 30, 48, 36),
                                  velocity=(1.5, 0.5))
    data = {"video": str(media / "walk.mp4"), "fps": FPS, "frames": [f"/data/upload/1/f{i}.jpg" for i in range(N)]}
    StubLabelStudio.task = {"id": TASK, "data": data, "project": 1, "annotations": [], "drafts": [], "predictions": []}
    StubLabelStudio.posts, StubLabelStudio.answered = [], []
    StubLabelStudio.held, StubLabelStudio.release = threading.Event(), threading.Event()
    stub = ThreadingHTTPServer(("127.0.0.1", 0), StubLabelStudio)
    stub.daemon_threads = True
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    port = free_port()
    env = {**os.environ, "SCRIBBLEBOX_DATA_DIR": str(tmp_path / "data"), "SCRIBBLEBOX_MEDIA_ROOTS": str(media),
           "SCRIBBLEBOX_JOB_LEASE_S": str(LEASE_S), "SCRIBBLEBOX_LOG_LEVEL": "INFO",
           "LABEL_STUDIO_URL": f"http://127.0.0.1:{stub.server_address[1]}", "LABEL_STUDIO_API_KEY": TOKEN}
    for name in ("SCRIBBLEBOX_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        env.pop(name, None)
    log = tmp_path / "backend.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scribblebox.cli", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), "--workers", "2"], env=env, cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not _healthy(url):
            assert proc.poll() is None and time.monotonic() < deadline, f"no backend:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield {"url": url, "proc": proc, "log": log, "truth": truth, "data_dir": tmp_path / "data"}
    finally:
        StubLabelStudio.release.set()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        stub.shutdown()
        stub.server_close()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _job(url: str) -> dict | None:
    try:
        jobs = requests.get(url + "/jobs", timeout=5).json()["jobs"]
    except (requests.RequestException, ValueError):
        return None  # a worker being replaced may drop a connection: ask again
    return next((j for j in jobs if j["kind"] == "masks" and j["key"] == str(TASK)), None)


def test_killed_worker_job_is_taken_over_and_the_correction_survives(world):
    url, proc, log, truth = world["url"], world["proc"], world["log"], world["truth"]
    fixed = correction_mask(truth[FIXED_ITEM])
    brush = {"id": "fix10", "from_name": "mask", "to_name": "frames", "type": "brushlabels", "origin": "manual",
             "item_index": FIXED_ITEM, "original_width": W, "original_height": H, "image_rotation": 0,
             "value": {"format": "rle", "rle": encode_mask(fixed), "brushlabels": [LABEL]}}
    webhook = {"action": "ANNOTATION_UPDATED", "project": {"id": 1, "label_config": CONFIG},
               "task": {"id": TASK, "project": 1},  # no data: the job GETs the task from Label Studio
               "annotation": {"id": 11, "task": TASK, "project": 1, "updated_at": "2025-01-03T10:00:00Z",
                              "result": [box_region(truth), brush]}}
    assert requests.post(url + "/webhook", json=webhook, timeout=5).status_code == 200

    assert StubLabelStudio.held.wait(DEADLINE_S), f"no prediction posted:\n{log.read_text()[-3000:]}"
    job = _job(url)
    assert job is not None and job["status"] == "running" and job["attempts"] == 1, job
    claims = re.findall(rf"\[(\d+)\] INFO \S+: task {TASK}: re-propagated", log.read_text())
    assert len(claims) == 1, log.read_text()[-3000:]
    victim = int(claims[0])
    workers = children(proc.pid)
    assert victim in workers and len(workers) == 2, (victim, workers)
    os.kill(victim, signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), time.time()

    deadline = killed_at + DEADLINE_S
    while (job := _job(url)) is None or job["status"] != "done":
        assert time.monotonic() < deadline, f"job not done after the kill: {job}\n{log.read_text()[-4000:]}"
        assert job is None or job["status"] != "failed", job
        time.sleep(0.25)
    StubLabelStudio.release.set()
    # The victim's last heartbeat was at most lease/4 before the kill: no takeover before lease - lease/4 after it.
    assert job["claimed_at"] >= killed_wall + LEASE_S * 3 / 4 - 0.2, (job, killed_wall)
    assert job["attempts"] == 2 and job["last_error"] is None, job
    now = children(proc.pid)
    assert victim not in now and len(now) == 2, f"gunicorn did not replace the killed worker: {now}"

    # Label Studio got the prediction from the worker that took over, with the correction unchanged on its frame.
    assert len(StubLabelStudio.answered) == 1 and len(StubLabelStudio.posts) == 2, StubLabelStudio.posts
    posted = StubLabelStudio.answered[0]
    poster = re.findall(rf"\[(\d+)\] INFO \S+: task {TASK}: posted a prediction", log.read_text())
    assert poster and int(poster[-1]) != victim and int(poster[-1]) in now, (poster, victim, now)
    assert posted["task"] == TASK
    masks = {r["item_index"]: decode_mask(r["value"]["rle"], W, H)
             for r in posted["result"] if r["type"] == "brushlabels"}
    assert np.array_equal(masks[FIXED_ITEM], fixed)
    assert len(masks) == N, "masks on every frame"

    # ... and the stored state holds it as the user's approved mask (the next correction starts from it).
    state = TrackStore(world["data_dir"] / "state.sqlite3").get_masks(job["project"], str(TASK), LABEL)
    assert state is not None and sorted(state.approved) == [FIXED_ITEM]
    assert np.array_equal(state.approved[FIXED_ITEM], fixed) and np.array_equal(state.predicted[FIXED_ITEM], fixed)
