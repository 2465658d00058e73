"""The Label Studio mask workflow with LS 1.23.2 payload shapes: clicks -> masks on every frame, saved corrections,
webhook jobs that post predictions. Stand-in box and mask engines, a stand-in video and a stand-in Label Studio."""
import copy
import json
import time
from importlib import resources

import numpy as np
import pytest

from scribblebox.backend.label_studio.brush import decode_mask, encode_mask
from scribblebox.backend.label_studio.config import parse_label_config
from scribblebox.backend.label_studio.mask_inputs import newest_result
from scribblebox.backend.label_studio.masks import FrameList, clicks_in, corrections, saved_masks
from scribblebox.backend.server import create_app
from scribblebox.backend.state import MaskState, mask_digest
from scribblebox.models.masks import MaskResult
from scribblebox.models.track import TrackResult, render_keyframes
from scribblebox.settings import ServerSettings, Settings

CONFIG = resources.files("scribblebox.config").joinpath("label_studio/video_masks.xml").read_text()
W, H, N = 64, 48, 20
VIDEO_URL = "/data/local-files/?d=clips/walk.mp4"
BOX_PX = (16, 12, 32, 24)  # the box drawn in `region()`


class FakeVideo:
    num_frames, fps, width, height, variable_frame_rate = N, 25.0, W, H, False

    def close(self):
        pass

    def index_at_time(self, t):
        return min(int(np.floor(t * self.fps + 1e-6)), self.num_frames - 1)


class BoxEngine:
    """Box tracks: the anchors, held after the last one."""

    def __init__(self):
        self.calls = 0

    def track(self, video, anchors, previous=None):
        self.calls += 1
        boxes = render_keyframes(anchors, video.num_frames)
        return TrackResult(video.num_frames, boxes, np.full(video.num_frames, 0.9), list(anchors), list(anchors))


def box_mask(box):
    x, y, w, h = (int(round(v)) for v in box)
    mask = np.zeros((H, W), bool)
    mask[y:y + h, x:x + w] = True
    return mask


class MaskEngine:
    """Box-filled masks; frames within 3 of an approved frame copy that frame's mask. Refuses scribbles off the track,
    as the real engine does."""

    def __init__(self):
        self.calls = []

    def run(self, video, boxes, scribbles, previous=None, approved=None, progress=None):
        approved = dict(approved or {})
        self.calls.append({"boxes": boxes, "scribbles": list(scribbles), "previous": previous, "approved": approved})
        for s in scribbles:
            if np.isnan(boxes[s.frame, 0]):
                raise ValueError(f"frame {s.frame} has scribbles but no box")
        masks = {}
        for f in np.flatnonzero(~np.isnan(boxes[:, 0])):
            near = [a for a in approved if abs(a - f) <= 3]
            masks[int(f)] = approved[min(near, key=lambda a: abs(a - f))].copy() if near else box_mask(boxes[f])
        return MaskResult(masks, approved, 0.01)


class Response:
    def __init__(self, status, text="{}"):
        self.status_code, self.text = status, text

    def json(self):
        return json.loads(self.text)


class FakeLabelStudio:
    """The session the backend uses for Label Studio: records posted predictions; `fail` answers 500 that many times."""

    url = "http://ls.test/"
    uses_pat = False

    def __init__(self):
        self.posts, self.fail = [], 0
        self.http = self

    def _headers(self, renew=False):
        return {"Authorization": "Token x"}

    def post(self, url, json, headers, timeout):
        if self.fail:
            self.fail -= 1
            return Response(500, "server error")
        self.posts.append((url, json))
        return Response(201)

    def get(self, url, stream=False):
        """GET api/predictions?task=N: the predictions posted so far (as Label Studio lists them)."""
        task = int(url.rsplit("task=", 1)[1])
        return Response(200, json.dumps([body for _, body in self.posts if body["task"] == task]))


def region(rid="box1", frame=1, label="Person", enabled=True):
    x, y, w, h = BOX_PX
    return {"id": rid, "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": N, "duration": N / 25, "labels": [label],
                      "sequence": [{"frame": frame, "x": x / W * 100, "y": y / H * 100, "width": w / W * 100,
                                    "height": h / H * 100, "rotation": 0, "enabled": enabled, "time": (frame - 1) / 25}]}}


def click(item, x=50.0, y=50.0, label="Person", positive=True, rid=None):
    return {"id": rid or f"k{item}{int(positive)}", "from_name": "clicks", "to_name": "frames", "type": "keypointlabels",
            "origin": "manual", "original_width": W, "original_height": H, "image_rotation": 0, "item_index": item,
            "is_positive": positive, "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}}


def task(count=N, step=None, **extra):
    data = {"video": VIDEO_URL, "fps": 25, "frames": [f"/data/upload/1/f{i}.jpg" for i in range(count)]}
    if step:
        data["frame_step"] = step
    return {"id": 7, "data": data, "project": 1, "annotations": [], "drafts": [], "predictions": [], **extra}


def body(the_task, context):
    return {"tasks": [the_task], "project": "1.1735725600", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": context}}}


@pytest.fixture()
def engines():
    return BoxEngine(), MaskEngine()


@pytest.fixture()
def app(tmp_path, engines):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "walk.mp4").write_bytes(b"fake")
    settings = Settings(server=ServerSettings(data_dir=str(tmp_path / "var")))
    app = create_app(settings, engine=engines[0], mask_engine=engines[1],
                     env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}, opener=lambda path: FakeVideo())
    backend = app.extensions["scribblebox"]
    backend.predictor.media.session = FakeLabelStudio()
    backend.jobs.backoff_s = 0.05
    yield app
    backend.worker.stop()


@pytest.fixture()
def client(app):
    return app.test_client()


def predict(client, the_task, context, status=200):
    reply = client.post("/predict", json=body(the_task, context))
    assert reply.status_code == status, reply.json
    return reply.json["results"][0] if status == 200 else reply.json


def brushes(item):
    return {r["item_index"]: r for r in item["result"] if r["type"] == "brushlabels"}


def test_click_gives_masks_on_every_frame_from_the_stored_box_track(client, engines):
    predict(client, task(), [region()])  # the box track first (interactive videorectangle call)
    item = predict(client, task(), [click(3, x=50, y=25)])
    out = brushes(item)
    assert sorted(out) == list(range(N)) and item["score"] == 1.0
    for index, result in out.items():
        assert result["id"] == f"sb-Person-{index}" and result["from_name"] == "mask" and result["to_name"] == "frames"
        assert (result["original_width"], result["original_height"], result["image_rotation"]) == (W, H, 0)
        assert result["value"]["brushlabels"] == ["Person"] and result["value"]["format"] == "rle"
        assert np.array_equal(decode_mask(result["value"]["rle"], W, H), box_mask(BOX_PX))
    call = engines[1].calls[0]
    (scribble,) = call["scribbles"]
    assert scribble.frame == 3 and scribble.positive and np.allclose(scribble.points, [[32, 12]]) and scribble.radius > 0
    assert call["approved"] == {} and call["previous"] is None
    assert np.allclose(call["boxes"], np.tile(BOX_PX, (N, 1)))
    # A second round (a negative click too): the last answer is the engine's `previous`.
    predict(client, task(), [click(3, x=50, y=25), click(8, x=10, y=10, positive=False)])
    second = engines[1].calls[1]
    assert [(s.frame, s.positive) for s in second["scribbles"]] == [(3, True), (8, False)]
    assert isinstance(second["previous"], MaskResult) and sorted(second["previous"].masks) == list(range(N))


def test_clicks_are_remembered_after_label_studio_drops_them(client, engines):
    """Accepting suggested masks deletes the smart keypoints in Label Studio: the next click comes alone."""
    predict(client, task(), [region()])
    predict(client, task(), [click(3, x=50, y=25)])
    predict(client, task(), [click(8, x=10, y=10, positive=False)])
    assert [(s.frame, s.positive) for s in engines[1].calls[-1]["scribbles"]] == [(3, True), (8, False)]
    predict(client, task(), [click(8, x=10, y=10, positive=False)])  # the same click again: not doubled
    assert len(engines[1].calls[-1]["scribbles"]) == 2


def test_saved_brush_edits_are_corrections_and_unchanged_answers_are_not(client, engines):
    predict(client, task(), [region()])
    first = predict(client, task(), [click(3)])
    edited = copy.deepcopy(first["result"])
    fixed = box_mask(BOX_PX)
    fixed[12:20, 16:24] = False  # the user erases a corner on frame 5
    (r5,) = [r for r in edited if r["item_index"] == 5]
    r5["value"]["rle"] = encode_mask(fixed)
    draft = {"id": 3, "result": [region(), *edited, click(9, rid="saved-click")], "updated_at": "2025-01-02T10:00:00Z"}
    item = predict(client, task(drafts=[draft]), [click(3)])
    call = engines[1].calls[-1]
    assert sorted(call["approved"]) == [5] and np.array_equal(call["approved"][5], fixed)
    assert sorted(s.frame for s in call["scribbles"]) == [3, 9], "clicks saved in the draft count too"
    out = brushes(item)
    assert np.array_equal(decode_mask(out[5]["value"]["rle"], W, H), fixed), "the correction is answered back unchanged"
    assert np.array_equal(decode_mask(out[7]["value"]["rle"], W, H), fixed) and not np.array_equal(
        decode_mask(out[12]["value"]["rle"], W, H), fixed)


def test_box_track_from_the_saved_annotation_or_the_context(client, engines):
    annotation = {"id": 1, "result": [region("saved", label="Vehicle")], "updated_at": "2025-01-02T10:00:00Z"}
    item = predict(client, task(annotations=[annotation]), [click(2, label="Vehicle")])
    assert sorted(brushes(item)) == list(range(N)) and engines[0].calls == 0
    assert {r["value"]["brushlabels"][0] for r in item["result"]} == {"Vehicle"}
    # A box in the context that we never tracked is tracked first, and comes back with the masks.
    item = predict(client, task(), [region("new", frame=5, label="Animal"), click(6, label="Animal")])
    assert engines[0].calls == 1
    (box,) = [r for r in item["result"] if r["type"] == "videorectangle"]
    assert box["id"] == "new" and sorted(brushes(item)) == list(range(4, N)), "no mask before the track starts"
    # Unchanged the next time: not re-tracked, not returned.
    item = predict(client, task(), [box, click(6, label="Animal")])
    assert engines[0].calls == 1 and all(r["type"] == "brushlabels" for r in item["result"])


def test_two_objects_get_one_label_each(client, engines):
    predict(client, task(), [region("a", label="Person"), region("b", label="Vehicle")])
    item = predict(client, task(), [click(1, label="Person"), click(2, label="Vehicle", rid="kv")])
    labels = [r["value"]["brushlabels"][0] for r in item["result"]]
    assert labels.count("Person") == N and labels.count("Vehicle") == N
    assert len({r["id"] for r in item["result"]}) == 2 * N
    assert [len(c["scribbles"]) for c in engines[1].calls] == [1, 1]


def test_frame_step_maps_pages_to_video_frames(client, engines):
    predict(client, task(), [region()])
    item = predict(client, task(count=N // 2, step=2), [click(3)])
    assert engines[1].calls[0]["scribbles"][0].frame == 6
    assert sorted(brushes(item)) == list(range(N // 2))


@pytest.mark.parametrize("the_task, context, status, message", [
    (task(), [click(1)], 422, "no box track labelled 'Person'"),
    (task(), [{**click(1), "value": {"x": 5, "y": 5}}], 400, "has no label"),
    (task(), [region(), click(N + 3)], 422, "outside the task's 20 frame images"),
    (task(), [region(frame=10), click(2)], 422, "frame 2 has scribbles but no box"),
    ({"id": 7, "data": {"video": VIDEO_URL, "fps": 25}, "drafts": []}, [region(), click(1)], 400, "no frame list under 'frames'"),
])
def test_bad_clicks_are_clear_4xx(client, the_task, context, status, message):
    answer = predict(client, the_task, context, status)
    assert message in answer["error"], answer


def test_keypoints_on_a_config_without_masks_stay_box_calls(engines):
    tracks_only = resources.files("scribblebox.config").joinpath("label_studio/video_tracks.xml").read_text()
    config = parse_label_config(tracks_only)
    assert not config.has_masks and clicks_in([click(1)], config) == []
    assert parse_label_config(CONFIG).has_masks


def test_saved_masks_union_and_resize():
    frames = FrameList("frames", "mask", 4, 1)
    a, b = np.zeros((H, W), bool), np.zeros((H, W), bool)
    a[:5, :5], b[10:20, 10:20] = True, True
    half = np.zeros((H // 2, W // 2), bool)
    half[:4, :4] = True

    def brush(mask, item, label="Person"):
        return {"type": "brushlabels", "to_name": "frames", "from_name": "mask", "item_index": item,
                "original_width": mask.shape[1], "original_height": mask.shape[0],
                "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]}}

    got = saved_masks([brush(a, 1), brush(b, 1), brush(half, 2), brush(a, 1, "Car"), {"type": "keypointlabels"}],
                      frames, (H, W))
    assert sorted(got) == ["Car", "Person"] and sorted(got["Person"]) == [1, 2]
    assert np.array_equal(got["Person"][1], a | b)
    assert got["Person"][2].shape == (H, W) and got["Person"][2][:8, :8].all() and got["Person"][2].sum() == 64


def test_corrections_tell_old_answers_from_edits():
    old, new, edit = box_mask(BOX_PX), box_mask((10, 10, 20, 20)), box_mask((30, 5, 20, 30))
    state = MaskState("v", (H, W))
    state.remember({1: old, 2: old})
    state.remember({1: new, 2: new})  # a second answer: frame 1 saved with the first one is still ours
    nudged = np.roll(new, 1, axis=1)  # the whole outline one pixel off: re-rendering, not an edit
    erased = new.copy()
    erased[12:17, 12:17] = False  # a 5x5 brush erase inside the mask is an edit
    assert corrections({1: old, 2: nudged, 3: edit}, state).keys() == {3}
    assert corrections({2: erased}, state).keys() == {2}
    state.approved = {2: edit}
    assert corrections({2: edit}, state).keys() == {2}, "an earlier correction stays one"
    assert corrections({1: old}, None).keys() == {1}, "without an answer of ours every saved mask is the user's"


def test_mask_state_round_trips_through_json():
    state = MaskState("v", (H, W), approved={4: box_mask((1, 2, 3, 4))}, clicks=[["k1", 3, 50.0, 25.0, True]])
    state.remember({0: box_mask(BOX_PX), 4: box_mask((1, 2, 3, 4))})
    back = MaskState.from_json(state.to_json())
    assert back.video_key == "v" and back.shape == (H, W) and back.seen == state.seen and back.clicks == state.clicks
    assert all(np.array_equal(back.predicted[f], state.predicted[f]) for f in (0, 4))
    assert np.array_equal(back.approved[4], state.approved[4]) and back.seen[0] == [mask_digest(state.predicted[0])]


def webhook(result, action="ANNOTATION_CREATED"):
    return {"action": action, "annotation": {"id": 11, "result": result, "task": 7, "project": 1,
                                             "updated_at": "2025-01-03T10:00:00Z"},
            "task": {"id": 7, "data": task()["data"], "project": 1}, "project": {"id": 1, "label_config": CONFIG}}


def wait_for_job(app, generation_done=None, timeout=10.0):
    jobs = app.extensions["scribblebox"].jobs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = jobs.get("1", "7")
        if row and row["status"] in ("done", "failed"):
            return row
        time.sleep(0.02)
    raise AssertionError(f"job not finished: {jobs.get('1', '7')}")


def test_webhook_correction_is_repropagated_in_the_background_and_posted(app, client, engines):
    ls = app.extensions["scribblebox"].predictor.media.session
    predict(client, task(), [region()])
    first = predict(client, task(), [click(3)])
    fixed = box_mask((16, 12, 20, 24))
    saved = copy.deepcopy(first["result"])
    (r10,) = [r for r in saved if r["item_index"] == 10]
    r10["value"]["rle"] = encode_mask(fixed)
    ls.fail = 1  # Label Studio answers 500 once: the job is retried, not lost
    start = time.perf_counter()
    reply = client.post("/webhook", json=webhook([region(), click(3), *saved]))
    assert reply.status_code == 200 and time.perf_counter() - start < 0.5
    row = wait_for_job(app)
    assert row["status"] == "done" and row["attempts"] == 2
    ((url, posted),) = ls.posts
    assert url == "http://ls.test/api/predictions" and posted["task"] == 7 and posted["model_version"] == "scribblebox-0.1.0-csrt"
    assert 0 <= posted["score"] <= 1
    types = [r["type"] for r in posted["result"]]
    assert types.count("videorectangle") == 1 and types.count("keypointlabels") == 1 and types.count("brushlabels") == N
    out = {r["item_index"]: decode_mask(r["value"]["rle"], W, H) for r in posted["result"] if r["type"] == "brushlabels"}
    assert np.array_equal(out[10], fixed)
    assert all(np.array_equal(out[f], fixed) for f in (8, 9, 11, 12)), "the neighbours follow the correction"
    assert np.array_equal(out[2], box_mask(BOX_PX))
    assert sorted(engines[1].calls[-1]["approved"]) == [10]
    # The same annotation saved again (or our posted prediction accepted as is): nothing new, nothing posted.
    accepted = [r for r in posted["result"]]
    client.post("/webhook", json=webhook(accepted, "ANNOTATION_UPDATED"))
    time.sleep(0.05)
    assert wait_for_job(app)["status"] == "done" and len(ls.posts) == 1
    assert client.get("/metrics").json["jobs"] == {"done": 1}
    # A retried job whose first worker died after Label Studio stored the prediction: not posted twice ...
    masks = app.extensions["scribblebox"].predictor.masks
    masks.post(7, posted)
    assert len(ls.posts) == 1
    masks.post(7, {**posted, "score": 0.5, "result": posted["result"][:-1]})  # ... while a new one is
    assert len(ls.posts) == 2


def test_webhook_job_without_a_box_track_gives_up_and_the_server_lives(app, client):
    saved = [{"type": "brushlabels", "from_name": "mask", "to_name": "frames", "item_index": 2, "original_width": W,
              "original_height": H, "value": {"format": "rle", "rle": encode_mask(box_mask(BOX_PX)), "brushlabels": ["Animal"]}}]
    assert client.post("/webhook", json=webhook(saved)).status_code == 200
    row = wait_for_job(app)
    assert row["status"] == "failed" and "no box track labelled 'Animal'" in row["last_error"]
    assert client.get("/health").status_code == 200
    assert client.post("/webhook", json=webhook([region()])).status_code == 200, "no brush: no mask job"


class FakeUploadServer:
    """Label Studio's import endpoints as the importer uses them (ids handed out in upload order)."""

    def __init__(self, config=CONFIG, status=None):
        self.config, self.status = config, status
        self.calls, self.uploads, self.tasks = [], {}, []

    def request(self, method, url, headers, timeout, params=None, files=None, json=None):
        import json as jsonlib

        import requests

        self.calls.append((method, url.split("127.0.0.1:9")[-1], dict(params or {})))
        if self.status == "down":
            raise requests.ConnectionError("connection refused")
        answer = requests.Response()
        answer.status_code = self.status or 200
        if url.endswith("/api/projects/3"):
            body = {"id": 3, "label_config": self.config}
        elif url.endswith("/import") and files:
            ids = []
            for name, (filename, handle) in files.items():
                ids.append(len(self.uploads) + 1)
                self.uploads[ids[-1]] = f"upload/3/abcd1234-{filename}"
                assert handle.read(2)
            body = {"file_upload_ids": ids}
        elif url.endswith("/file-uploads"):
            body = [{"id": i, "file": self.uploads[i]} for i in reversed(jsonlib.loads(params["ids"]))]
        elif url.endswith("/import"):
            self.tasks += json
            body = {"task_ids": [40 + len(self.tasks)]}
        else:
            answer.status_code = 404
            body = {}
        answer._content = jsonlib.dumps(body).encode()
        return answer


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    from scribblebox.models.synthetic import make_moving_box_video

    path = tmp_path_factory.mktemp("clip") / "my clip.mp4"
    make_moving_box_video(path, num_frames=10, size=(64, 48), start=(8, 8, 20, 16), fps=25)
    return path


def test_import_video_uploads_frames_and_creates_one_task(small_video):
    from scribblebox.importer import import_video

    server = FakeUploadServer()
    assert import_video(small_video, "http://127.0.0.1:9", "0" * 40, 3, every=3, http=server) == 41
    (created,) = server.tasks
    data = created["data"]
    assert data["video"] == "/data/upload/3/abcd1234-my clip.mp4" and data["fps"] == 25 and data["frame_step"] == 3
    assert data["frames"] == [f"/data/upload/3/abcd1234-my_clip-{i:06d}.jpg" for i in (0, 3, 6, 9)]
    uploads = [c for c in server.calls if c[1].endswith("/import") and c[2].get("commit_to_project") == "false"]
    assert len(uploads) == 2, "the video, then the frames: no task per file"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"video": "missing.mp4"}, FileNotFoundError, "no video file"),
    ({"suffix": ".avi"}, ValueError, "convert it first"),
    ({"every": 0}, ValueError, "--every"),
    ({"api_key": " "}, ValueError, "no API key"),
    ({"server": FakeUploadServer(config="<View><Image name='i' value='$image'/></View>")}, ValueError, "no <Video> tag"),
    ({"server": FakeUploadServer(config=CONFIG.replace("$frames", "$pages"))}, ValueError, "video_masks.xml"),
    ({"server": FakeUploadServer(status=401)}, RuntimeError, "refused the API key"),
    ({"server": FakeUploadServer(status="down")}, RuntimeError, "cannot reach Label Studio"),
])
def test_import_video_errors_say_what_to_fix(small_video, tmp_path, kwargs, error, message):
    from scribblebox.importer import import_video

    video = small_video
    if "suffix" in kwargs:
        video = tmp_path / f"clip{kwargs['suffix']}"
        video.write_bytes(small_video.read_bytes())
    if "video" in kwargs:
        video = tmp_path / kwargs["video"]
    with pytest.raises(error, match=message):
        import_video(video, "http://127.0.0.1:9", kwargs.get("api_key", "0" * 40), 3, kwargs.get("every", 1),
                     http=kwargs.get("server") or FakeUploadServer())


def test_newest_result_is_the_latest_annotation_or_draft_and_ignores_malformed_fields():
    older = {"updated_at": "2026-01-01", "result": [{"id": "a"}]}
    newer_draft = {"updated_at": "2026-02-01", "result": [{"id": "d"}]}
    cancelled = {"updated_at": "2026-03-01", "result": [{"id": "c"}], "was_cancelled": True}
    assert newest_result({"annotations": [older, cancelled], "drafts": [newer_draft]}) == [{"id": "d"}]
    assert newest_result({"annotations": [older], "drafts": None}) == [{"id": "a"}]
    # what a fuzzed /predict body sent (annotations: 1.5 raised TypeError -> HTTP 500): nothing, not a crash
    assert newest_result({"annotations": 1.5, "drafts": "x"}) == []
    assert newest_result({"annotations": [{"updated_at": "2026-01-01", "result": {"id": "a"}}]}) == []
