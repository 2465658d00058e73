"""Hostile /predict and /webhook payloads (hypothesis) through Flask's test client: any JSON gives 200 or a 4xx JSON
with an "error" key, never a 500 or a traceback; background work (webhook records, mask jobs) never crashes.

Stand-in box and mask engines and a stand-in video; payloads are arbitrary JSON and Label-Studio-shaped objects whose
fields are arbitrary JSON. SSRF, traversal and download-size refusals are in tests/test_media.py
(test_ssrf_and_traversal_refusals, test_same_host_other_port_is_refused, test_local_paths_only_under_roots, test_size_limit).
"""
import json
import logging
from importlib import resources

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scribblebox.backend.server import create_app
from scribblebox.models.masks import MaskResult
from scribblebox.models.track import Keyframe, TrackResult, render_keyframes
from scribblebox.settings import ServerSettings, Settings

BOX_CONFIG = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <VideoRectangle name="box" toName="video" smart="true"/>
  <Labels name="videoLabels" toName="video"><Label value="Person"/></Labels>
</View>"""
MASK_CONFIG = resources.files("scribblebox.config").joinpath("label_studio/video_masks.xml").read_text()
VIDEO = "clips/walk.mp4"
W, H, N = 64, 48, 20
BUDGET = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                          HealthCheck.function_scoped_fixture])


class FakeVideo:
    num_frames, fps, width, height, variable_frame_rate = N, 25.0, W, H, False

    def close(self) -> None:
        pass

    def index_at_time(self, t: float) -> int:
        return min(max(int(np.floor(t * self.fps + 1e-6)), 0), self.num_frames - 1)


class BoxEngine:
    def track(self, video, anchors, previous=None):
        kfs = sorted(anchors, key=lambda k: k.frame)
        kfs = kfs + [Keyframe.of(min(kfs[-1].frame + 5, video.num_frames - 1), kfs[-1].box)]
        return TrackResult(video.num_frames, render_keyframes(kfs, video.num_frames), np.full(video.num_frames, 0.8),
                           kfs, list(anchors))


class MaskEngine:
    def run(self, video, boxes, scribbles, previous=None, approved=None, progress=None):
        masks = {}
        for f in np.flatnonzero(~np.isnan(boxes[:, 0])):
            x, y, w, h = (int(round(v)) for v in boxes[f])
            mask = np.zeros((H, W), bool)
            mask[max(y, 0):y + h, max(x, 0):x + w] = True
            masks[int(f)] = mask
        return MaskResult(masks, dict(approved or {}), 0.0)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "clips").mkdir()
    (root / "clips" / "walk.mp4").write_bytes(b"decoded by the stand-in opener only")
    app = create_app(Settings(server=ServerSettings(data_dir=str(root / "var"))), engine=BoxEngine(),
                     mask_engine=MaskEngine(), env={"SCRIBBLEBOX_MEDIA_ROOTS": str(root)}, opener=lambda path: FakeVideo())
    backend = app.extensions["scribblebox"]
    backend.worker.start = lambda: None  # jobs are run here, synchronously, to see how each one ends
    yield app
    backend.background.shutdown(wait=True)


# ---- strategies ---------------------------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12))
any_json = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)
numbers = st.one_of(st.integers(-5, 120), st.floats(-50, 150), st.sampled_from([float("nan"), float("inf"), 1e308]), any_json)


def maybe(strategy):
    """Usually the plausible value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, any_json)


def optional_dict(required: dict, optional: dict):
    return st.fixed_dictionaries({k: maybe(v) for k, v in required.items()}, optional={k: maybe(v) for k, v in optional.items()})


keyframe = optional_dict({"frame": st.integers(-2, N + 3), "x": numbers, "y": numbers, "width": numbers, "height": numbers},
                         {"enabled": st.booleans(), "time": numbers, "rotation": numbers})
labels = st.lists(st.sampled_from(["Person", "Vehicle", "Animal", "Nobody"]), max_size=2)
rle = st.lists(st.integers(0, 255), max_size=40)
region = st.one_of(
    optional_dict({"id": st.text(max_size=6), "type": st.just("videorectangle"), "to_name": st.sampled_from(["video", "frames", "x"]),
                   "value": optional_dict({"sequence": st.lists(keyframe, max_size=3)},
                                          {"framesCount": numbers, "labels": labels, "duration": numbers})},
                  {"from_name": st.just("box"), "origin": st.text(max_size=5)}),
    optional_dict({"id": st.text(max_size=6), "type": st.just("keypointlabels"), "to_name": st.sampled_from(["frames", "video"]),
                   "value": optional_dict({"x": numbers, "y": numbers, "keypointlabels": labels}, {"width": numbers})},
                  {"item_index": st.integers(-2, N + 2), "is_positive": any_json, "original_width": numbers}),
    optional_dict({"type": st.just("brushlabels"), "to_name": st.just("frames"),
                   "value": optional_dict({"rle": rle, "brushlabels": labels}, {"format": st.just("rle")})},
                  {"item_index": st.integers(-2, N + 2), "original_width": st.just(W), "original_height": st.just(H), "id": st.text(max_size=4)}),
    any_json)
task_data = optional_dict({"video": st.sampled_from([VIDEO, "/etc/passwd", "../clips/walk.mp4", "file:///etc/passwd",
                                                     "http://169.254.169.254/x", "", "clips/none.mp4"])},
                          {"fps": numbers, "frames": st.lists(st.just("/data/upload/1/f.jpg"), max_size=N + 2),
                           "frame_step": numbers})
task = optional_dict({"id": st.one_of(st.integers(-3, 10**12), st.text(max_size=5)), "data": task_data},
                     {"annotations": st.lists(optional_dict({"result": st.lists(region, max_size=3)},
                                                            {"was_cancelled": st.booleans(), "id": st.integers()}), max_size=2),
                      "project": any_json})
configs = st.sampled_from([BOX_CONFIG, MASK_CONFIG, "", "<View>", "<View><Video name='v'/></View>"])
predict_payload = st.one_of(
    any_json,
    optional_dict({"tasks": st.lists(task, max_size=2)},
                  {"project": st.sampled_from(["1.1735725600", "2", ""]), "label_config": configs,
                   "params": optional_dict({}, {"context": st.one_of(st.none(), optional_dict({"result": st.lists(region, max_size=3)}, {}))})}))
webhook_payload = st.one_of(
    any_json,
    optional_dict({"action": st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "PROJECT_UPDATED"]),
                   "annotation": optional_dict({"result": st.lists(region, max_size=3)},
                                               {"id": st.integers(), "task": st.integers(-1, 9), "project": st.integers()})},
                  {"task": task, "project": optional_dict({"id": st.integers(0, 3)}, {"label_config": configs})}))


# ---- checks -------------------------------------------------------------------------------------------------------
def post(client, path: str, payload) -> None:
    reply = client.post(path, data=json.dumps(payload), content_type="application/json")
    assert b"Traceback" not in reply.data
    assert reply.status_code == 200 or 400 <= reply.status_code < 500, (reply.status_code, reply.data[:300])
    body = reply.get_json()
    assert isinstance(body, dict), reply.data[:300]
    if reply.status_code != 200:
        assert isinstance(body.get("error"), str) and body["error"], body


def unexpected_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@BUDGET
@given(payload=predict_payload)
def test_predict_never_crashes(app, payload, caplog):
    caplog.clear()
    post(app.test_client(), "/predict", payload)
    assert not unexpected_errors(caplog)


@BUDGET
@given(payload=webhook_payload)
def test_webhook_never_crashes_nor_its_background_work(app, payload, caplog):
    backend = app.extensions["scribblebox"]
    caplog.clear()
    post(app.test_client(), "/webhook", payload)
    backend.background.submit(lambda: None).result(timeout=30)  # the recorder thread has finished this payload
    while backend.worker.run_once():
        pass
    assert not unexpected_errors(caplog)
    with backend.jobs._connect() as db:  # a job ends done, failed (GiveUp: bad input) or waits for Label Studio
        errors = [row[0] for row in db.execute("SELECT last_error FROM background_jobs WHERE last_error IS NOT NULL")]
    assert all(e.startswith(("GiveUp:", "RuntimeError: set LABEL_STUDIO_URL")) for e in errors), errors


@pytest.mark.parametrize("body, content_type", [(b"", "application/json"), (b"{", "application/json"), (b"\xff\xfe", "text/plain"),
                                                (b"[1, 2]", "application/json"), (b'"tasks"', "application/json")])
def test_non_object_bodies_are_400(app, body, content_type):
    for path in ("/predict", "/webhook", "/setup"):
        reply = app.test_client().post(path, data=body, content_type=content_type)
        assert reply.status_code == 400 and "error" in reply.get_json()


def test_oversized_body_is_refused_with_json(app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 1024)
    reply = app.test_client().post("/predict", data=json.dumps({"tasks": [], "pad": "x" * 4096}), content_type="application/json")
    assert reply.status_code == 413 and reply.get_json()["error"]


def test_batch_predict_with_mixed_annotation_ids_and_bad_results(app):
    the_task = {"id": 1, "data": {"video": VIDEO, "fps": 25},
                "annotations": [{"id": "a", "result": 5}, {"id": 3, "result": "x"}], "drafts": 7}
    reply = app.test_client().post("/predict", json={"tasks": [the_task], "label_config": BOX_CONFIG, "params": {"context": None}})
    assert reply.status_code == 200 and reply.get_json() == {"results": [[]]}


def test_default_request_size_limit_is_set(app):
    assert app.config["MAX_CONTENT_LENGTH"] == 64 * 2**20
