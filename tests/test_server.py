"""The ML-backend HTTP server with Label Studio 1.23.2 payload shapes, a stand-in engine and a stand-in video."""
import base64
import copy
import os
import socket
import subprocess
import time

import numpy as np
import pytest
import requests

from scribblebox.backend import server
from scribblebox.backend.server import create_app
from scribblebox.models.track import Keyframe, TrackResult, render_keyframes
from scribblebox.settings import ServerSettings, Settings

CONFIG = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <VideoRectangle name="box" toName="video" smart="true"/>
  <Labels name="videoLabels" toName="video"><Label value="Person"/><Label value="Car"/></Labels>
</View>"""
VIDEO_URL = "/data/local-files/?d=clips/walk.mp4"  # LS local storage (document root shared with the backend)


def region(rid="_2StHRvFvY", frame=1, x=10.0, label="Person", frames_count=100):
    return {"id": rid, "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": frames_count, "duration": frames_count / 25, "labels": [label],
                      "sequence": [{"frame": frame, "x": x, "y": 20.0, "width": 25.0, "height": 30.0, "rotation": 0,
                                    "enabled": True, "time": (frame - 1) / 25}]}}


def task(task_id=7, video=VIDEO_URL, **extra):
    return {"id": task_id, "data": {"video": video, "fps": 25}, "meta": {}, "created_at": "2025-01-01T10:00:00.000000Z",
            "updated_at": "2025-01-01T10:00:00.000000Z", "is_labeled": False, "overlap": 1, "project": 1, **extra}


def predict_body(tasks, context):
    return {"tasks": tasks, "project": "1.1735725600", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": context}}


class FakeVideo:
    num_frames, fps, width, height, variable_frame_rate = 100, 25.0, 640, 480, False
    closed = False

    def close(self) -> None:
        self.closed = True

    def index_at_time(self, t: float) -> int:
        return min(int(np.floor(t * self.fps + 1e-6)), self.num_frames - 1)


OPENED: list[FakeVideo] = []


def fake_opener(path):
    if path.name == "broken.mp4":
        raise ValueError("moov atom not found")
    OPENED.append(FakeVideo())
    return OPENED[-1]


class FakeEngine:
    """Returns the anchors plus one keyframe 10 frames after the last one, shifted 5 px right."""

    def __init__(self):
        self.calls = []

    def track(self, video, anchors, previous=None):
        self.calls.append((list(anchors), previous))
        anchors = sorted(anchors, key=lambda k: k.frame)
        last = anchors[-1]
        kfs = anchors + [Keyframe.of(min(last.frame + 10, video.num_frames - 1), np.add(last.box, [5, 0, 0, 0]))]
        boxes = render_keyframes(kfs, video.num_frames)
        return TrackResult(video.num_frames, boxes, np.full(video.num_frames, 0.8), kfs, anchors, warnings=["fake"])


@pytest.fixture()
def env(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("walk.mp4", "broken.mp4", "other.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"not decoded by the fake opener")
    return {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}


@pytest.fixture()
def settings(tmp_path):
    return Settings(server=ServerSettings(data_dir=str(tmp_path / "var")))


@pytest.fixture()
def engine():
    return FakeEngine()


@pytest.fixture()
def app(settings, env, engine):
    return create_app(settings, engine=engine, env=env, opener=fake_opener)


@pytest.fixture()
def client(app):
    return app.test_client()


def test_health_setup_versions_metrics(client):
    assert client.get("/health").json == {"status": "UP", "model_class": "ScribbleBox"}
    setup = client.post("/setup", json={"project": "1.1735725600", "schema": CONFIG, "hostname": "http://localhost:8080",
                                        "access_token": "0" * 40, "extra_params": None})
    assert setup.status_code == 200 and setup.json["model_version"] == "scribblebox-0.1.0-csrt"
    assert client.get("/versions").json == {"versions": ["scribblebox-0.1.0-csrt"]}
    metrics = client.get("/metrics").json
    assert metrics["requests"] == 3 and metrics["errors"] == 0 and {"predictions", "seconds"} <= set(metrics)


def test_interactive_predict_returns_the_same_region_with_fitted_keyframes(client, engine):
    reply = client.post("/predict", json=predict_body([task()], {"result": [region(frame=5)]}))
    assert reply.status_code == 200, reply.json
    (item,) = reply.json["results"]
    assert item["model_version"] == "scribblebox-0.1.0-csrt" and item["score"] == pytest.approx(0.8)
    assert item["warnings"] == ["fake"]
    (out,) = item["result"]
    assert out["id"] == "_2StHRvFvY" and out["type"] == "videorectangle" and out["value"]["labels"] == ["Person"]
    seq = out["value"]["sequence"]
    assert [s["frame"] for s in seq] == [5, 15]
    assert seq[1]["x"] == pytest.approx(10.0 + 5 / 640 * 100) and seq[1]["time"] == pytest.approx(14 / 25)
    (anchors, previous), = engine.calls
    assert anchors == [Keyframe.of(4, [64, 96, 160, 144])] and previous is None


def test_videos_are_closed_after_each_request(client):
    OPENED.clear()
    client.post("/predict", json=predict_body([task()], {"result": [region()]}))
    client.post("/predict", json=predict_body([task()], {"result": [region(x=120.0)]}))  # refused mid-way
    assert len(OPENED) == 2 and all(v.closed for v in OPENED)


def test_no_tasks_no_results(client):
    assert client.post("/predict", json=predict_body([], None)).json == {"results": []}


def test_second_round_anchors_are_user_changes_plus_old_anchors(client, engine):
    first = client.post("/predict", json=predict_body([task()], {"result": [region(frame=5)]})).json["results"][0]["result"][0]
    edited = copy.deepcopy(first)
    edited["value"]["sequence"][1]["x"] += 10  # the user moves our keyframe on frame 15
    edited["value"]["sequence"].append({**edited["value"]["sequence"][0], "frame": 40, "time": 39 / 25, "x": 50.0})
    client.post("/predict", json=predict_body([task()], {"result": [edited]}))
    anchors, previous = engine.calls[1]
    assert [k.frame for k in anchors] == [4, 14, 39]
    assert isinstance(previous, TrackResult) and previous.keyframes[0].frame == 4
    # A different video for the same task: the old state is ignored.
    client.post("/predict", json=predict_body([task(video="/data/local-files/?d=clips/other.mp4")], {"result": [edited]}))
    anchors, previous = engine.calls[2]
    assert [k.frame for k in anchors] == [4, 14, 39] and previous is None


def test_several_regions_give_several_tracks(client, engine):
    regions = [region("a1", frame=1), region("b2", frame=30, x=50.0, label="Car")]
    result = client.post("/predict", json=predict_body([task()], {"result": regions})).json["results"][0]["result"]
    assert [(r["id"], r["value"]["labels"]) for r in result] == [("a1", ["Person"]), ("b2", ["Car"])]
    assert len(engine.calls) == 2


@pytest.mark.parametrize("context", [{"result": []}, {"result": [{"id": "k", "type": "keypointlabels", "value": {}}]}])
def test_empty_or_foreign_context_is_an_empty_answer(client, engine, context):
    reply = client.post("/predict", json=predict_body([task()], context))
    assert reply.status_code == 200
    assert reply.json["results"] == [{"model_version": "scribblebox-0.1.0-csrt", "score": 0.0, "result": []}]
    assert engine.calls == []


def annotation(aid, updated, regions, **extra):
    return {"id": aid, "result": regions, "was_cancelled": False, "updated_at": updated, "created_at": updated,
            "completed_by": 1, "task": 7, "project": 1, **extra}


def test_batch_completes_the_latest_annotation_or_draft(client):
    tasks = [
        task(7, annotations=[annotation(1, "2025-01-02T10:00:00Z", [region("old")]),
                             annotation(2, "2025-01-03T10:00:00Z", [region("new")]),
                             annotation(3, "2025-01-04T10:00:00Z", [region("cancelled")], was_cancelled=True)], drafts=[]),
        task(8, annotations=[], drafts=[{"id": 4, "result": [region("draft")], "updated_at": "2025-01-02T10:00:00Z"}]),
        task(9, annotations=[], drafts=[]),
        task(10, video="/data/local-files/?d=clips/broken.mp4", annotations=[annotation(5, "2025-01-02T10:00:00Z", [region("x")])]),
    ]
    reply = client.post("/predict", json=predict_body(tasks, None))
    assert reply.status_code == 200
    items = reply.json["results"]
    assert [[r["id"] for r in item["result"]] for item in items[:2]] == [["new"], ["draft"]]
    assert items[2] == []  # nothing to start from: no prediction, so "Retrieve predictions" still runs later
    assert items[3] == []  # undecodable video: refused and logged, the rest of the batch is answered
    assert client.get("/metrics").json["predictions"] == 4


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "must be JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"tasks": {"id": 1}}', 400, "list of task objects"),
    (b'{"tasks": [{"id": 1, "data": {"video": "x"}}], "label_config": "<View/>"}', 400, "no <Video> tag"),
    (b'{"tasks": [{"id": 1}], "label_config": "x", "params": {"context": {"foo": 1}}}', 400, "'result' list"),
    (b'{"tasks": [{"id": 1}], "label_config": "x", "params": {"context": "abc"}}', 400, "'result' list"),
])
def test_malformed_requests_are_clear_4xx(client, body, status, message, caplog):
    reply = client.post("/predict", data=body, content_type="application/json")
    assert reply.status_code == status and message in reply.json["error"], reply.json
    assert "refused POST /predict" in caplog.text


@pytest.mark.parametrize("the_task, the_region, status, message", [
    ({"id": 7, "data": {"image": "x.jpg"}}, region(), 400, "no video URL under 'video'"),
    ({"data": {"video": VIDEO_URL}}, region(), 400, "'id' and a 'data' object"),
    (task(video="/data/local-files/?d=clips/broken.mp4"), region(), 422, "cannot decode the video"),
    (task(video="http://10.0.0.1/clip.mp4"), region(), 400, "other than LABEL_STUDIO_URL"),
    (task(), region(x=120.0), 422, "outside the frame"),
    (task(), region(frame=101), 422, "beyond framesCount"),
    (task(), {**region(), "to_name": "camera2"}, 400, "Video tags ['video']"),
])
def test_bad_tasks_and_regions_are_clear_4xx(client, the_task, the_region, status, message):
    reply = client.post("/predict", json=predict_body([the_task], {"result": [the_region]}))
    assert reply.status_code == status and message in reply.json["error"], reply.json


def test_label_config_from_setup_is_used_when_predict_has_none(client):
    client.post("/setup", json={"project": "1.1735725600", "schema": CONFIG})
    body = predict_body([task()], {"result": [region()]})
    del body["label_config"]
    assert client.post("/predict", json=body).status_code == 200


def test_frame_rate_mismatch_is_reported(client):
    the_task = task()
    the_task["data"]["fps"] = 30
    item = client.post("/predict", json=predict_body([the_task], {"result": [region()]})).json["results"][0]
    assert any("differs from the video's 25.000 fps" in w for w in item["warnings"])


def test_variable_frame_rate_is_reported(settings, env, engine):
    class VFR(FakeVideo):
        variable_frame_rate = True

    client = create_app(settings, engine=engine, env=env, opener=lambda path: VFR()).test_client()
    item = client.post("/predict", json=predict_body([task()], {"result": [region()]})).json["results"][0]
    assert any("variable frame rate" in w for w in item["warnings"])


def test_batch_task_without_annotations_is_fetched_from_label_studio(app, client):
    class Session:
        def get_json(self, path):
            self.path = path
            return {**task(12), "annotations": [annotation(1, "2025-01-02T10:00:00Z", [region("fetched")])], "drafts": []}

    session = app.extensions["scribblebox"].predictor.media.session = Session()
    reply = client.post("/predict", json=predict_body([{"id": 12, "data": {"video": VIDEO_URL, "fps": 25}}], None))
    assert session.path == "/api/tasks/12"
    assert [r["id"] for r in reply.json["results"][0]["result"]] == ["fetched"]


def test_unexpected_errors_are_500_without_traceback(settings, env, caplog):
    class Broken:
        def track(self, video, anchors, previous=None):
            raise RuntimeError("secret internals")

    client = create_app(settings, engine=Broken(), env=env, opener=fake_opener).test_client()
    reply = client.post("/predict", json=predict_body([task()], {"result": [region()]}))
    assert reply.status_code == 500 and reply.json == {"error": "internal error", "detail": "RuntimeError"}
    assert "Traceback" in caplog.text and "secret internals" in caplog.text
    assert client.get("/health").status_code == 200


def test_webhook_records_annotation_keyframes_as_anchors(app, client, engine):
    ann = annotation(11, "2025-01-02T10:00:00Z", [region("r9", frame=3)])
    ann["result"][0]["value"]["sequence"].append({**ann["result"][0]["value"]["sequence"][0], "frame": 50, "time": 49 / 25})
    payload = {"action": "ANNOTATION_CREATED", "annotation": ann, "task": task(), "project": {"id": 1, "label_config": CONFIG}}
    start = time.perf_counter()
    reply = client.post("/webhook", json=payload)
    assert reply.status_code == 200 and time.perf_counter() - start < 0.5
    app.extensions["scribblebox"].background.submit(lambda: None).result(10)  # wait for the background record
    state = app.extensions["scribblebox"].predictor.store.get("1", "7", "r9")
    assert [k.frame for k in state.anchors] == [2, 49] and state.answered == state.anchors
    client.post("/predict", json=predict_body([task()], {"result": ann["result"]}))
    anchors, _ = engine.calls[0]
    assert [k.frame for k in anchors] == [2, 49]
    bad = {**payload, "task": task(video="/data/local-files/?d=clips/broken.mp4")}
    assert client.post("/webhook", json=bad).status_code == 200  # refused in the background, logged, worker alive
    app.extensions["scribblebox"].background.submit(lambda: None).result(10)
    for action in ("START_TRAINING", "PROJECT_UPDATED", "ANNOTATIONS_DELETED", "TASKS_CREATED"):
        assert client.post("/webhook", json={"action": action, "project": {"id": 1}}).status_code == 200


def test_basic_auth_on_every_route_but_health(settings, env, engine):
    env = {**env, "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "s3cret"}
    client = create_app(settings, engine=engine, env=env, opener=fake_opener).test_client()
    assert client.get("/health").status_code == 200
    refused = client.post("/predict", json=predict_body([task()], {"result": []}))
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert refused.json["error"] == "unauthorized"
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ls:nope").decode()}
    assert client.get("/versions", headers=wrong).status_code == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert client.post("/predict", json=predict_body([task()], {"result": []}), headers=right).status_code == 200


def test_engine_is_built_once_per_process(settings, env, monkeypatch):
    built = []

    def from_settings(tracking):
        built.append(tracking)
        return FakeEngine()

    from scribblebox.models import curvevot

    monkeypatch.setattr(server, "_ENGINES", {})
    monkeypatch.setattr(curvevot.CurveVOT, "from_settings", staticmethod(from_settings))
    app = create_app(settings, env=env, opener=fake_opener)
    assert built == [], "the engine is built lazily, on the first prediction"
    for rid in ("a", "b"):
        assert app.test_client().post("/predict", json=predict_body([task()], {"result": [region(rid)]})).status_code == 200
    create_app(settings, env=env, opener=fake_opener).test_client().post("/predict", json=predict_body([task()], {"result": [region("c")]}))
    assert built == [settings.tracking]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_gunicorn_with_the_app_factory(settings, monkeypatch):
    port, seen = _free_port(), {}

    def execve(path, command, env):
        assert path == command[0]
        seen["command"], seen["threads"] = command, env.get("OMP_NUM_THREADS")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):  # up to 30 s: gunicorn boots slowly on a busy 2-core machine
                try:
                    seen["health"] = requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                    seen["version"] = requests.get(f"http://127.0.0.1:{port}/versions", timeout=1).json()
                    break
                except (requests.ConnectionError, requests.Timeout):
                    time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)
        return 0

    monkeypatch.setattr(server.os, "execve", execve)
    assert server.serve(settings, host="127.0.0.1", port=port, workers=1) == 0
    assert seen["command"][1:3] == ["-m", "gunicorn"] and "--timeout" in seen["command"] and "--no-control-socket" in seen["command"]
    assert seen["command"][-1] == "scribblebox.backend.server:create_app()"
    assert seen["health"] == {"status": "UP", "model_class": "ScribbleBox"}
    assert seen["version"] == {"versions": ["scribblebox-0.1.0-csrt"]}
    assert seen["threads"] == (os.environ.get("OMP_NUM_THREADS") or "1"), "torch threads: one per request thread"


def _write_clip(path, frames=40, size=(160, 120), fps=25):
    """A textured square moving right over a noisy background, encoded as H.264 (what LS's player gets)."""
    import av

    rng = np.random.default_rng(1)
    background = rng.integers(60, 120, (size[1], size[0], 3), dtype=np.uint8)
    patch = rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)
    truth = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            x, y = 20 + 2 * i, 40
            image = background.copy()
            image[y:y + 30, x:x + 30] = patch
            truth.append((x, y, 30, 30))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    return np.array(truth, dtype=float)


def test_real_engine_on_a_small_video(tmp_path, settings):
    """The whole path: LS payload -> media -> open_video -> CurveVOT -> LS region, on a real H.264 file."""
    from scribblebox.models.geometry import iou

    truth = _write_clip(tmp_path / "clip.mp4")
    client = create_app(settings, env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}).test_client()
    first = {"frame": 1, "x": 20 / 160 * 100, "y": 40 / 120 * 100, "width": 30 / 160 * 100, "height": 30 / 120 * 100,
             "rotation": 0, "enabled": True, "time": 0.0}
    the_region = region("real1", frames_count=40)
    the_region["value"]["sequence"] = [first]
    the_task = task(video="/data/local-files/?d=clip.mp4")
    reply = client.post("/predict", json=predict_body([the_task], {"result": [the_region]}))
    assert reply.status_code == 200, reply.json
    (out,) = reply.json["results"][0]["result"]
    seq = out["value"]["sequence"]
    assert out["id"] == "real1" and seq[0]["frame"] == 1 and seq[0]["x"] == pytest.approx(first["x"])
    assert 1 < len(seq) < 40, "a few keyframes summarise the track"
    kfs = [Keyframe.of(s["frame"] - 1, [s["x"] * 1.6, s["y"] * 1.2, s["width"] * 1.6, s["height"] * 1.2], s["enabled"]) for s in seq]
    drawn = render_keyframes(kfs, 40)
    assert float(np.mean(iou(drawn, truth))) > 0.7
