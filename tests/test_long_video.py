"""Long videos within Label Studio's 100 s /predict timeout: a window around the edit answered now, the whole video
finished by a `complete` job and posted to a stub Label Studio over real HTTP; progress from the engines and the CLI."""
import argparse
import io
import json
import logging
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from importlib import resources

import cv2
import numpy as np
import pytest

from scribblebox.backend.label_studio.brush import encode_mask
from scribblebox.backend.label_studio.long_video import Deadline, window_around
from scribblebox.backend.server import create_app
from scribblebox.commands import TextBar, track_command
from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.geometry import iou
from scribblebox.models.mask_engine import MaskEngine
from scribblebox.models.masks import MaskResult, Scribble
from scribblebox.models.synthetic import moving_box_scene
from scribblebox.models.track import Keyframe, render_keyframes
from scribblebox.models.video import ArrayVideo, FrameIndexError
from scribblebox.models.window import CountingVideo, FrameWindow, WindowClosed
from scribblebox.settings import MaskSettings, ServerSettings, Settings, TrackingSettings, load_settings
from stub_http import StubHandler

MASK_CONFIG = resources.files("scribblebox.config").joinpath("label_studio/video_masks.xml").read_text()
VIDEO_URL = "/data/local-files/?d=clips/long.mp4"
W, H, FPS = 128, 96, 25


@pytest.fixture(scope="module")
def scene():
    """600 frames of a textured box drifting slowly (it stays in the frame), small so tracking is fast."""
    scene = moving_box_scene(600, (W, H), start=(16, 24, 32, 24), velocity=(0.1, 0.05), seed=3)
    return np.stack(list(scene.frames())), scene.boxes


def clip(scene, count=600):
    return ArrayVideo(scene[0][:count], fps=FPS), scene[1][:count]


class StubLabelStudio:
    """Label Studio over loopback HTTP: records POST /api/predictions, answers GET /api/tasks/<id> with `task`."""

    def __init__(self):
        self.posts, self.task = [], {}
        stub = self

        class Handler(StubHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") == "/api/predictions":
                    stub.posts.append({"auth": self.headers.get("Authorization"), **body})
                    self.reply(201, {"id": len(stub.posts)})
                else:
                    self.reply(404, {})

            def do_GET(self):
                if self.path.rstrip("/") == f"/api/tasks/{stub.task.get('id')}":
                    self.reply(200, stub.task)
                else:
                    self.reply(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for_posts(self, count, timeout=120.0):
        end = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < end:
            time.sleep(0.05)
        assert len(self.posts) >= count, f"Label Studio got {len(self.posts)} prediction(s), expected {count}"
        return self.posts[count - 1]


@pytest.fixture()
def label_studio():
    stub = StubLabelStudio()
    yield stub
    stub.server.shutdown()


def make_app(tmp_path, video, label_studio=None, window=100, deadline=30.0, mask_engine=None, engine=None):
    (tmp_path / "clips").mkdir(exist_ok=True)
    (tmp_path / "clips" / "long.mp4").write_bytes(b"decoded by the injected opener")
    settings = Settings(tracking=TrackingSettings(tracker="kcf"),
                        server=ServerSettings(data_dir=str(tmp_path / "var"), window_frames=window, predict_deadline_s=deadline))
    env = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}
    if label_studio is not None:
        env.update(LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY="secret-token")
    app = create_app(settings, env=env, opener=lambda path: video, mask_engine=mask_engine, engine=engine)
    return app


def box_region(box, frame, frames_count, rid="r1", label="Person"):
    x, y, w, h = box
    return {"id": rid, "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": frames_count, "duration": frames_count / FPS, "labels": [label],
                      "sequence": [{"frame": frame + 1, "x": x / W * 100, "y": y / H * 100, "width": w / W * 100,
                                    "height": h / H * 100, "rotation": 0, "enabled": True, "time": frame / FPS}]}}


def task(count, **extra):
    data = {"video": VIDEO_URL, "fps": FPS, "frames": [f"/data/upload/1/f{i}.jpg" for i in range(count)]}
    return {"id": 7, "data": data, "project": 1, "annotations": [], "drafts": [], "predictions": [], **extra}


def predict(client, the_task, context):
    body = {"tasks": [the_task], "project": "1.1735725600", "label_config": MASK_CONFIG,
            "params": {"login": None, "password": None, "context": None if context is None else {"result": context}}}
    start = time.perf_counter()
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.json
    return reply.json["results"][0], time.perf_counter() - start


def video_frames(region):
    return [item["frame"] - 1 for item in region["value"]["sequence"]]


def keyframes_px(region):
    return [Keyframe.of(item["frame"] - 1, (item["x"] * W / 100, item["y"] * H / 100, item["width"] * W / 100,
                                            item["height"] * H / 100), item["enabled"]) for item in region["value"]["sequence"]]


def wait_done(client, kind="complete", timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = [j for j in client.get("/jobs").json["jobs"] if j["kind"] == kind]
        if jobs and jobs[0]["status"] == "done":
            return jobs[0]
        assert not jobs or jobs[0]["status"] != "failed", jobs[0]
        time.sleep(0.05)
    raise AssertionError(f"the {kind} job did not finish: {client.get('/jobs').json}")


# ---- boxes ------------------------------------------------------------------------------------------------------------
def test_long_video_answers_the_window_now_and_posts_the_whole_track(tmp_path, scene, label_studio, caplog):
    video, truth = clip(scene)
    app = make_app(tmp_path, video, label_studio)
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="scribblebox.backend.jobs")
    item, seconds = predict(client, task(600), [box_region(truth[300], 300, 600)])
    (region,) = item["result"]
    frames = video_frames(region)
    assert region["id"] == "r1" and all(250 <= f < 350 for f in frames) and 300 in frames, frames
    assert len(frames) >= 2, "the window around the new box is tracked"
    assert any("250..349" in w for w in item["warnings"]) and any("/jobs" in w for w in item["warnings"])
    queued = [j for j in client.get("/jobs").json["jobs"] if j["kind"] == "complete"]
    assert [(j["project"], j["key"]) for j in queued] == [("1", "7")]
    job = wait_done(client)
    assert job["progress"] == 1.0 and job["attempts"] == 1
    post = label_studio.wait_for_posts(1)
    assert post["task"] == 7 and post["auth"] == "Token secret-token" and post["model_version"].startswith("scribblebox")
    (full,) = post["result"]
    assert full["id"] == "r1" and min(video_frames(full)) < 50 and max(video_frames(full)) > 550
    assert iou(render_keyframes(keyframes_px(full), 600), truth).mean() > 0.6
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job complete 1/7:")]
    percents = [int(line.split(":")[1].split("%")[0]) for line in lines]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100, lines
    # The stored state is the whole track: the windowed answer and the full one are both recognised as ours.
    state = app.extensions["scribblebox"].predictor.store.get("1", "7", "r1")
    assert state.result["num_frames"] == 600 and len(state.result["segments"]) == 2
    assert {k.frame for k in keyframes_px(full)} <= {k.frame for k in state.answered}
    assert {k.frame for k in keyframes_px(region)} <= {k.frame for k in state.answered}
    app.extensions["scribblebox"].worker.stop()


def test_keyframes_outside_the_window_are_kept_and_a_late_window_answers_the_region_as_given(tmp_path, scene, label_studio):
    video, truth = clip(scene)
    app = make_app(tmp_path, video, label_studio, deadline=0.0)
    client = app.test_client()
    two = box_region(truth[100], 100, 600)
    two["value"]["sequence"] += box_region(truth[500], 500, 600)["value"]["sequence"]
    item, seconds = predict(client, task(600), [two])
    assert item["result"][0]["value"]["sequence"] == two["value"]["sequence"], "nothing was ready: the user's keyframes"
    assert any("predict_deadline_s" in w for w in item["warnings"]) and seconds < 5
    wait_done(client)
    (full,) = label_studio.wait_for_posts(1)["result"]
    frames = video_frames(full)
    assert {100, 500} <= set(frames) and min(frames) < 50 and max(frames) > 550
    assert iou(render_keyframes(keyframes_px(full), 600), truth).mean() > 0.6
    app.extensions["scribblebox"].worker.stop()


def test_a_job_overtaken_by_a_newer_call_leaves_the_state_to_the_newer_job(tmp_path, scene, label_studio):
    video, truth = clip(scene)
    app = make_app(tmp_path, video, label_studio)
    backend = app.extensions["scribblebox"]
    backend.worker.start = lambda: None  # jobs stay queued: this test runs them by hand, in a chosen order
    client = app.test_client()
    first, _ = predict(client, task(600), [box_region(truth[300], 300, 600)])
    stale = backend.jobs.claim()
    edited = first["result"][0]
    edited["value"]["sequence"] += box_region(truth[330] + [3, 0, 0, 0], 330, 600)["value"]["sequence"]
    predict(client, task(600), [edited])
    store = backend.predictor.store
    assert [k.frame for k in store.get("1", "7", "r1").anchors] == [300, 330]
    backend.run_job(stale, lambda fraction, message="": None)
    backend.jobs.finish(stale)
    assert label_studio.wait_for_posts(1) and store.get("1", "7", "r1").result == {}, "the stale job stored nothing"
    newer = backend.jobs.claim()
    assert newer.generation == 2 and [a[0] for a in newer.payload["regions"][0]["anchors"]] == [300, 330]
    backend.run_job(newer, lambda fraction, message="": None)
    state = store.get("1", "7", "r1")
    assert [k.frame for k in state.anchors] == [300, 330] and state.result["num_frames"] == 600
    assert {300, 330} <= {item["frame"] - 1 for item in label_studio.wait_for_posts(2)["result"][0]["value"]["sequence"]}


def test_a_short_video_is_answered_whole_with_no_job(tmp_path, scene, label_studio):
    video, truth = clip(scene)
    app = make_app(tmp_path, video, label_studio, window=1000)
    client = app.test_client()
    item, _ = predict(client, task(600), [box_region(truth[300], 300, 600)])
    frames = video_frames(item["result"][0])
    assert min(frames) < 50 and max(frames) > 550 and "warnings" not in item
    assert client.get("/jobs").json["jobs"] == [] and label_studio.posts == []


# ---- masks ------------------------------------------------------------------------------------------------------------
class BoxMasks:
    """Box-filled masks on every boxed frame of the video it is given; records the lengths it saw and its progress."""

    def __init__(self):
        self.calls, self.progress = [], []

    def run(self, video, boxes, scribbles, previous=None, approved=None, progress=None):
        self.calls.append(video.num_frames)
        masks = {}
        for f in np.flatnonzero(~np.isnan(boxes[:, 0])):
            x, y, w, h = (int(round(v)) for v in boxes[f])
            masks[int(f)] = np.zeros((video.height, video.width), bool)
            masks[int(f)][max(y, 0):y + h, max(x, 0):x + w] = True
            if progress is not None:
                progress((len(masks)) / len(boxes), "masks")
                self.progress.append(len(masks) / len(boxes))
        return MaskResult(masks, dict(approved or {}), 0.01)


def click(item, label="Person"):
    return {"id": f"k{item}", "from_name": "clicks", "to_name": "frames", "type": "keypointlabels", "origin": "manual",
            "original_width": W, "original_height": H, "image_rotation": 0, "item_index": item, "is_positive": True,
            "value": {"x": 30.0, "y": 40.0, "width": 0.6, "keypointlabels": [label]}}


def brushes(result):
    return sorted(r["item_index"] for r in result if r["type"] == "brushlabels")


def test_long_video_masks_the_window_around_the_click_now_and_posts_every_frame(tmp_path, scene, label_studio):
    video, truth = clip(scene, 240)
    engine = BoxMasks()
    app = make_app(tmp_path, video, label_studio, window=60, mask_engine=engine)
    client = app.test_client()
    region = box_region(truth[0], 0, 240)
    label_studio.task = task(240)
    predict(client, task(240), [region])  # the box track: window 0..59 now, the rest in a job
    wait_done(client)
    label_studio.wait_for_posts(1)
    item, _ = predict(client, task(240), [click(150)])
    assert brushes(item["result"]) == list(range(120, 180)) and engine.calls[-1] == 60
    assert any("120..179" in w for w in item["warnings"])
    job = wait_done(client)
    assert job["progress"] == 1.0
    post = label_studio.wait_for_posts(2)
    assert brushes(post["result"]) == list(range(240)) and engine.calls[-1] == 240
    assert engine.progress[-1] == 1.0 and engine.progress == sorted(engine.progress)
    app.extensions["scribblebox"].worker.stop()


def test_batch_predict_on_a_long_mask_task_answers_windows_and_posts_everything(tmp_path, scene, label_studio):
    video, truth = clip(scene, 240)
    app = make_app(tmp_path, video, label_studio, window=60, mask_engine=BoxMasks())
    client = app.test_client()
    draft = {"id": 3, "result": [box_region(truth[0], 0, 240), click(150)], "updated_at": "2025-01-02T10:00:00Z"}
    label_studio.task = task(240, drafts=[draft])
    item, _ = predict(client, task(240, drafts=[draft]), None)
    (region,) = [r for r in item["result"] if r["type"] == "videorectangle"]
    assert max(video_frames(region)) < 60 and brushes(item["result"]) == list(range(120, 180))
    wait_done(client)
    post = label_studio.wait_for_posts(1)
    (full,) = [r for r in post["result"] if r["type"] == "videorectangle"]
    assert full["id"] == "r1" and max(video_frames(full)) > 200 and brushes(post["result"]) == list(range(240))
    app.extensions["scribblebox"].worker.stop()


def test_batch_predict_on_a_mask_task_returns_the_saved_objects_masks(tmp_path, scene):
    video = ArrayVideo(scene[0][:20], fps=FPS)
    app = make_app(tmp_path, video, mask_engine=BoxMasks())
    client = app.test_client()
    region = box_region(scene[1][0], 0, 20)
    fixed = np.zeros((H, W), bool)
    fixed[20:40, 12:36] = True
    brush = {"id": "b5", "from_name": "mask", "to_name": "frames", "type": "brushlabels", "original_width": W,
             "original_height": H, "image_rotation": 0, "item_index": 5, "value": {"format": "rle", "rle": encode_mask(fixed),
                                                                                 "brushlabels": ["Person"]}}
    draft = {"id": 3, "result": [region, brush], "updated_at": "2025-01-02T10:00:00Z"}
    item, _ = predict(client, task(20, drafts=[draft]), None)
    assert [r["id"] for r in item["result"] if r["type"] == "videorectangle"] == ["r1"]
    assert brushes(item["result"]) == list(range(20))
    only_boxes, _ = predict(client, task(20, drafts=[{"id": 4, "result": [region], "updated_at": "2025"}]), None)
    assert brushes(only_boxes["result"]) == [], "no clicks and no brush masks: box tracks only"
    assert client.get("/jobs").json["jobs"] == []
    app.extensions["scribblebox"].worker.stop()


# ---- engines, views, CLI ----------------------------------------------------------------------------------------------
def test_engines_report_increasing_progress_ending_at_one(scene):
    video = ArrayVideo(scene[0][:40], fps=FPS)
    seen = []
    CurveVOT(tracker="kcf").track(video, [Keyframe.of(20, scene[1][20])], progress=lambda f, m: seen.append(f))
    assert len(seen) > 5 and seen == sorted(seen) and seen[-1] == 1.0 and all(f < 1 for f in seen[:-1])
    masks = []
    engine = MaskEngine.from_settings(MaskSettings(work_size=64))
    boxes = np.asarray(scene[1][:12], dtype=float)
    result = engine.run(ArrayVideo(scene[0][:12], fps=FPS), boxes,
                        [Scribble(4, np.array([[24.0, 29.0]]), True)], progress=lambda f, m: masks.append(f))
    assert len(result.masks) == 12
    assert len(masks) > 3 and masks == sorted(masks) and masks[-1] == 1.0


def test_frame_window_is_a_video_of_its_frames_that_refuses_reads_once_closed(scene):
    video = ArrayVideo(scene[0][:50], fps=FPS)
    window = FrameWindow(video, 10, 30)
    assert (window.num_frames, window.width, window.height, window.timestamps[0]) == (20, W, H, 0.0)
    assert np.array_equal(window.frame(0), video.frame(10))
    assert [i for i, _ in window.frames(0, 20)] == list(range(20))
    back = list(window.frames(19, -1))
    assert [i for i, _ in back] == list(range(19, -1, -1)) and np.array_equal(back[-1][1], video.frame(10))
    with pytest.raises(FrameIndexError):
        window.frame(20)
    with pytest.raises(ValueError, match="not inside"):
        FrameWindow(video, 40, 60)
    reads = []
    counted = CountingVideo(window, lambda: reads.append(1))
    list(counted.frames(0, 5))
    counted.frame(3)
    assert len(reads) == 6
    window.close()
    with pytest.raises(WindowClosed):
        window.frame(0)


def test_deadline_abandons_slow_work_and_its_thread_stops_reading(scene):
    video = ArrayVideo(scene[0][:50], fps=FPS)
    window, stopped = FrameWindow(video, 0, 50), threading.Event()

    def slow():
        try:
            for _ in window.frames(0, 50):
                time.sleep(0.05)
        finally:
            stopped.set()

    start = time.perf_counter()
    assert Deadline(0.2).run(window, slow) == (False, None)
    assert time.perf_counter() - start < 1.0 and stopped.wait(1.0)
    assert Deadline(5).run(FrameWindow(video, 0, 5), lambda: 42) == (True, 42)
    with pytest.raises(ValueError, match="bad anchor"):
        Deadline(5).run(FrameWindow(video, 0, 5), lambda: (_ for _ in ()).throw(ValueError("bad anchor")))


@pytest.mark.parametrize("frames, expected", [([300], (250, 350)), ([10], (0, 100)), ([590], (500, 600)),
                                              ([280, 320], (250, 350)), ([100, 400], (350, 450)), ([], (0, 100))])
def test_window_around_centres_on_the_edit(frames, expected):
    assert window_around(frames, 600, 100) == expected


def test_settings_and_environment_override():
    settings = load_settings(env={"SCRIBBLEBOX_PREDICT_DEADLINE_S": "12.5"})
    assert settings.server.predict_deadline_s == 12.5 and settings.server.window_frames == 300


def test_cli_progress_bar(tmp_path, scene, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(scene[0][:30]):
        cv2.imwrite(str(folder / f"{i:05d}.png"), frame)
    box = ",".join(str(round(v, 1)) for v in scene[1][0])
    args = argparse.Namespace(video=str(folder), box=box, frame=0, tracker="kcf", tolerance=None,
                              output=str(tmp_path / "out.json"), progress=True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert track_command(Settings(), args) == 0
    text = sys.stderr.getvalue()
    assert text.count("\r") > 3 and "[" + "#" * 30 + "] 100%" in text and text.endswith("\n")
    assert len(json.loads((tmp_path / "out.json").read_text())["track"]) == 30
    bar = TextBar(io.StringIO(), width=10)
    bar(0.5, "half")
    assert bar.stream.getvalue() == "\r[#####-----]  50% half"
