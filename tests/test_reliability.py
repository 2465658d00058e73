"""Faults, with the real engine and real (synthetic) video files: each gives a clear 4xx JSON error or a correct answer.
Label Studio unreachable when a mask job posts: the job stays queued and is retried with backoff until it succeeds.

The load test (N concurrent calls against gunicorn, latency, memory) is scripts/bench_load.py; figures in
docs/reliability.md.
"""
import json
import socket
import threading
import time
from http.server import ThreadingHTTPServer

import numpy as np
import pytest

from scribblebox.backend.label_studio.masks import MaskPredictor
from scribblebox.backend.server import create_app
from scribblebox.models.geometry import iou
from scribblebox.models.synthetic import make_moving_box_video, make_vfr_video
from scribblebox.settings import ServerSettings, Settings
from stub_http import StubHandler

CONFIG = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <VideoRectangle name="box" toName="video" smart="true"/>
  <Labels name="videoLabels" toName="video"><Label value="Car"/></Labels>
</View>"""
LEGACY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The fault videos, made once: name -> (file, ground-truth boxes or None, size)."""
    root = tmp_path_factory.mktemp("faults")
    good = root / "good.mp4"
    truth = make_moving_box_video(good, num_frames=30, size=(320, 240), start=(40, 50, 80, 60), velocity=(3, 1))
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (root / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (root / "empty.mp4").write_bytes(b"")
    _, vfr_truth = make_vfr_video(root / "vfr.mp4", num_frames=30, size=(320, 240))
    one = make_moving_box_video(root / "one.mp4", num_frames=1, size=(320, 240), start=(40, 50, 80, 60))
    big = make_moving_box_video(root / "4k.mp4", num_frames=5, size=(3840, 2160), start=(800, 600, 640, 480), velocity=(20, 5))
    return root, {"good": (truth, (320, 240)), "vfr": (vfr_truth, (320, 240)), "one": (one, (320, 240)), "4k": (big, (3840, 2160))}


@pytest.fixture(scope="module")
def client(media, tmp_path_factory):
    root, _ = media
    settings = Settings(server=ServerSettings(data_dir=str(tmp_path_factory.mktemp("var"))))
    return create_app(settings, env={"SCRIBBLEBOX_MEDIA_ROOTS": str(root)}).test_client()  # real CurveVOT, real decoder


def body(root, name, box_pct, frame=1, frames_count=30, task_id=1):
    x, y, w, h = box_pct
    region = {"id": f"r{task_id}", "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
              "value": {"framesCount": frames_count, "labels": ["Car"],
                        "sequence": [{"frame": frame, "x": x, "y": y, "width": w, "height": h, "enabled": True, "rotation": 0,
                                      "time": (frame - 1) / 25}]}}
    task = {"id": task_id, "data": {"video": str(root / name), "fps": 25}, "project": 1}
    return {"tasks": [task], "project": "1.1", "label_config": CONFIG, "params": {"context": {"result": [region]}}}


def pct(box, size):
    w, h = size
    return (box[0] / w * 100, box[1] / h * 100, box[2] / w * 100, box[3] / h * 100)


def refused(reply, status, words):
    assert reply.status_code == status, reply.get_json()
    error = reply.get_json()
    assert words in error["error"] + json.dumps(error.get("detail")), error
    assert "Traceback" not in reply.get_data(as_text=True)


def tracked(reply, truth, size, min_iou=0.5):
    """200, and every returned keyframe lies on the true box."""
    assert reply.status_code == 200, reply.get_json()
    item = reply.get_json()["results"][0]
    (region,) = item["result"]
    for kf in region["value"]["sequence"]:
        box = np.array([kf["x"] * size[0], kf["y"] * size[1], kf["width"] * size[0], kf["height"] * size[1]]) / 100
        assert iou(box, truth[kf["frame"] - 1]) >= min_iou, (kf, truth[kf["frame"] - 1])
    return item, region["value"]["sequence"]


@pytest.mark.parametrize("name", ["corrupt.mp4", "truncated.mp4", "empty.mp4"])
def test_undecodable_video_is_a_422(client, media, name):
    root, _ = media
    refused(client.post("/predict", json=body(root, name, (10, 10, 20, 20))), 422, "cannot decode the video")


def test_variable_frame_rate_video_is_tracked_with_a_warning(client, media):
    root, videos = media
    truth, size = videos["vfr"]
    item, seq = tracked(client.post("/predict", json=body(root, "vfr.mp4", pct(truth[0], size), task_id=2)), truth, size)
    assert any("variable frame rate" in w for w in item["warnings"])
    assert seq[0]["frame"] == 1 and len(seq) >= 1


def test_one_frame_video(client, media):
    root, videos = media
    truth, size = videos["one"]
    _, seq = tracked(client.post("/predict", json=body(root, "one.mp4", pct(truth[0], size), frames_count=1, task_id=3)), truth, size)
    assert [k["frame"] for k in seq] == [1]


def test_4k_video(client, media):
    root, videos = media
    truth, size = videos["4k"]
    _, seq = tracked(client.post("/predict", json=body(root, "4k.mp4", pct(truth[0], size), frames_count=5, task_id=4)), truth, size)
    assert seq[0]["frame"] == 1


@pytest.mark.parametrize("box, words", [((30, 30, 0, 0), "empty box"), ((30, 30, 0, 10), "empty box"),
                                        ((120, 10, 20, 20), "lies outside the frame"), ((-40, -40, 20, 20), "lies outside the frame"),
                                        ((10, 10, -5, 20), "negative box size")])
def test_degenerate_boxes_are_422(client, media, box, words):
    root, _ = media
    refused(client.post("/predict", json=body(root, "good.mp4", box, task_id=5)), 422, words)


def test_box_partly_outside_is_clipped_and_tracked(client, media):
    root, videos = media
    truth, size = videos["good"]
    x, y, w, h = pct(truth[0], size)
    reply = client.post("/predict", json=body(root, "good.mp4", (x - 20, y, w + 20, h), task_id=6))  # left edge off-frame
    assert reply.status_code == 200 and reply.get_json()["results"][0]["result"][0]["value"]["sequence"][0]["x"] >= 0


def test_frame_beyond_the_video_is_422(client, media):
    root, videos = media
    truth, size = videos["good"]
    refused(client.post("/predict", json=body(root, "good.mp4", pct(truth[0], size), frame=31, task_id=7)), 422, "beyond framesCount")


# ---- Label Studio unreachable when a mask job posts ----------------------------------------------------------------
class Predictions(StubHandler):
    posts: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = self.path == "/api/predictions" and self.headers.get("Authorization") == f"Token {LEGACY}"
        if ok:
            type(self).posts.append(body)
        self.reply(201 if ok else 401, {})


def test_label_studio_down_when_a_job_posts_is_retried_with_backoff(tmp_path, monkeypatch):
    """The port refuses connections (Label Studio down) for the first attempts, then Label Studio comes up."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = blocker.getsockname()[1]
    item = {"model_version": "v", "score": 0.5, "result": [{"type": "brushlabels"}]}
    monkeypatch.setattr(MaskPredictor, "job_payload", staticmethod(lambda payload: ("1", "7", {"task": {"id": 7}})))
    monkeypatch.setattr(MaskPredictor, "refit", lambda self, project, payload, progress=None: (item, {}))
    app = create_app(Settings(server=ServerSettings(data_dir=str(tmp_path / "var"))), engine=object(), mask_engine=object(),
                     env={"LABEL_STUDIO_URL": f"http://127.0.0.1:{port}", "LABEL_STUDIO_API_KEY": LEGACY})
    backend = app.extensions["scribblebox"]
    backend.jobs.backoff_s = 0.2
    Predictions.posts = []
    server = None
    try:
        webhook = {"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "task": 7, "result": [{"type": "brushlabels"}]}}
        assert app.test_client().post("/webhook", json=webhook).status_code == 200
        rows = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not rows or rows[-1]["attempts"] < 2):
            row = backend.jobs.get("1", "7")
            if row and (not rows or row["attempts"] != rows[-1]["attempts"]) and row["status"] == "pending" and row["last_error"]:
                rows.append(row)
            time.sleep(0.01)
        assert [r["attempts"] for r in rows][:2] == [1, 2], rows
        assert all("cannot reach Label Studio" in r["last_error"] for r in rows)
        gaps = [r["next_run"] - r["updated"] for r in rows[:2]]
        assert gaps == pytest.approx([0.2, 0.4], abs=0.02), "exponential backoff"
        blocker.close()
        server = ThreadingHTTPServer(("127.0.0.1", port), Predictions)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        while time.monotonic() < deadline and backend.jobs.get("1", "7")["status"] != "done":
            time.sleep(0.02)
        row = backend.jobs.get("1", "7")
        assert row["status"] == "done" and row["attempts"] >= 3 and row["last_error"] is None
        assert Predictions.posts == [{"task": 7, "result": item["result"], "model_version": "v", "score": 0.5}]
    finally:
        backend.worker.stop()
        blocker.close()
        if server is not None:
            server.shutdown()
            server.server_close()
