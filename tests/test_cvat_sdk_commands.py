"""`scribblebox cvat track / propagate` against recorded CVAT REST responses (tests/fixtures/cvat, built from
cvat-sdk 2.80.0's models). A real `cvat_sdk.Client` is used; only its HTTP transport is replaced by `FakeCVAT`,
which answers each request from the fixtures (frames are rendered from the same synthetic scene) and records what
the command sends, so the SDK's own (de)serialisation and type checks run on both sides. No live CVAT is involved.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest
import urllib3
from cvat_sdk import Client, models
from cvat_sdk.api_client import ApiClient
from cvat_sdk.masks import decode_mask

from scribblebox.backend.cvat import sdk_commands
from scribblebox.backend.cvat.annotations import track_anchors, track_boxes
from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.geometry import iou, mask_to_box
from scribblebox.models.mask_engine import MaskEngine
from scribblebox.models.synthetic import moving_box_scene
from scribblebox.models.track import render_keyframes
from scribblebox.settings import load_settings

FIXTURES = Path(__file__).parent / "fixtures" / "cvat"
SCENE = {"num_frames": 24, "size": (320, 240), "start": (40, 60, 64, 48), "velocity": (3, 1), "seed": 3}
TASK, CAR, PERSON, BACKGROUND = 7, 11, 12, 13


class FakeCVAT:
    """Stands in for urllib3's pool manager: routes (method, path) to a recorded body and logs every request.

    The paths are CVAT's own, as cvat-sdk 2.80.0 calls them (note the trailing slashes): GET /api/tasks/7,
    /api/tasks/7/data/meta, /api/labels?task_id=7&page=1, /api/tasks/7/annotations/,
    /api/tasks/7/data/?type=frame&number=N&quality=original (an image), PATCH /api/tasks/7/annotations/?action=...
    """

    def __init__(self, annotations: str) -> None:
        self.scene = moving_box_scene(**SCENE)
        self.routes = {("GET", f"/api/tasks/{TASK}"): "task.json",
                       ("GET", f"/api/tasks/{TASK}/data/meta"): "data_meta.json",
                       ("GET", "/api/labels"): "labels.json",
                       ("GET", f"/api/tasks/{TASK}/annotations/"): annotations}
        self.requests: list[tuple[str, str, dict, object]] = []

    def request(self, method, url, body=None, fields=None, headers=None, **_):
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()} | {k: str(v) for k, v in (fields or [])}
        self.requests.append((method, parts.path, query, json.loads(body) if body else None))
        if method == "GET" and parts.path == f"/api/tasks/{TASK}/data/" and query.get("type") == "frame":
            ok, png = cv2.imencode(".png", self.scene.render(int(query["number"])))
            return urllib3.HTTPResponse(body=png.tobytes(), status=200, headers={"Content-Type": "image/png"})
        if method == "PATCH" and parts.path == f"/api/tasks/{TASK}/annotations/":
            return self._json(json.loads(body))  # CVAT answers with the objects it stored
        name = self.routes.get((method, parts.path))
        if name is None:
            return self._json({"detail": "Not found."}, 404)
        return self._json(json.loads((FIXTURES / name).read_text()))

    @staticmethod
    def _json(data, status: int = 200) -> urllib3.HTTPResponse:
        return urllib3.HTTPResponse(body=json.dumps(data).encode(), status=status,
                                    headers={"Content-Type": "application/json"})

    def patches(self, action: str) -> list[dict]:
        return [body for method, _, query, body in self.requests
                if method == "PATCH" and query.get("action") == action]


def fake_client(annotations: str) -> tuple[Client, FakeCVAT]:
    client = Client("http://cvat.local", check_server_version=False)
    server = FakeCVAT(annotations)
    client.api_client.rest_client.pool_manager = server
    return client, server


def strict(body: dict) -> models.PatchedLabeledDataRequest:
    """Parse a request body the way CVAT's schema defines it (the SDK's own type-checked deserialiser)."""
    return ApiClient().deserialize(urllib3.HTTPResponse(body=json.dumps(body).encode(), status=200,
                                                        headers={"Content-Type": "application/json"}),
                                   (models.PatchedLabeledDataRequest,), _check_type=True)


@pytest.fixture(scope="module")
def settings():
    return load_settings(env={})


@pytest.mark.parametrize("name, model", [("task.json", models.TaskRead), ("data_meta.json", models.DataMetaRead),
                                         ("labels.json", models.PaginatedLabelList),
                                         ("annotations_track.json", models.LabeledData),
                                         ("annotations_propagate.json", models.LabeledData)])
def test_fixtures_match_the_sdk_schema(name, model):
    response = urllib3.HTTPResponse(body=(FIXTURES / name).read_bytes(), status=200,
                                    headers={"Content-Type": "application/json"})
    assert isinstance(ApiClient().deserialize(response, (model,), _check_type=True), model)


def test_track_writes_curve_keyframes_as_a_cvat_track(settings):
    client, server = fake_client("annotations_track.json")
    summary = sdk_commands.track_task(client, TASK, CurveVOT.from_settings(settings.tracking), label="car")
    created = server.patches("create")
    assert len(created) == 1 and created[0].get("shapes", []) == [] and len(created[0]["tracks"]) == 1
    track = strict(created[0]).tracks[0]
    assert track.label_id == CAR and track.source == "semi-auto"
    frames = [s.frame for s in track.shapes]
    assert frames == sorted(frames) and {0, 20} <= set(frames)
    assert all(s.type.value == "rectangle" for s in track.shapes)
    assert len(frames) < SCENE["num_frames"] / 2  # a few keyframes, not a box per frame
    truth = moving_box_scene(**SCENE).boxes
    drawn = render_keyframes(track_anchors(track), SCENE["num_frames"])  # what CVAT interpolates between them
    assert iou(drawn, truth).min() > 0.8
    deleted = server.patches("delete")  # the two source boxes now live in the track; the person box stays
    assert [s["id"] for s in deleted[0]["shapes"]] == [101, 102] and summary.removed == [101, 102]
    frame_requests = [q for m, p, q, _ in server.requests if p.endswith("/data/") and q.get("type") == "frame"]
    assert frame_requests and all(q["quality"] == "original" for q in frame_requests)


def test_track_from_a_track_id_replaces_that_track(settings):
    client, server = fake_client("annotations_propagate.json")
    summary = sdk_commands.track_task(client, TASK, CurveVOT.from_settings(settings.tracking), track_id=201)
    assert summary.anchors == 2 and [t["id"] for t in server.patches("delete")[0]["tracks"]] == [201]
    assert server.patches("delete")[0].get("shapes", []) == []


def test_track_errors_are_clear(settings):
    client, _ = fake_client("annotations_track.json")
    engine = CurveVOT.from_settings(settings.tracking)
    with pytest.raises(ValueError, match="--label"):
        sdk_commands.track_task(client, TASK, engine, label=None, track_id=None)  # car and person rectangles
    with pytest.raises(ValueError, match="no label 'truck'.*car"):
        sdk_commands.track_task(client, TASK, engine, label="truck")
    with pytest.raises(ValueError, match="no rectangle track with id 999"):
        sdk_commands.track_task(client, TASK, engine, track_id=999)


def test_lost_objects_become_outside_keyframes():
    from scribblebox.backend.cvat.annotations import keyframes_track
    from scribblebox.models.track import Keyframe

    track = keyframes_track([Keyframe.of(0, (10, 10, 20, 20)), Keyframe.of(5, (20, 10, 20, 20), False),
                             Keyframe.of(9, (40, 10, 20, 20))], CAR, 12)
    assert [(s.frame, s.outside) for s in track.shapes] == [(0, False), (5, False), (6, True), (9, False)]
    boxes = track_boxes(track, 12)
    assert np.isnan(boxes[6:9]).all() and not np.isnan(boxes[:6]).any() and not np.isnan(boxes[9:]).any()


def test_propagate_writes_one_mask_per_frame(settings):
    client, server = fake_client("annotations_propagate.json")
    summary = sdk_commands.propagate_task(client, TASK, 4, MaskEngine.from_settings(settings.masks),
                                          CurveVOT.from_settings(settings.tracking), label="car", first=2, last=15,
                                          negative_label="background", replace_previous=True)
    assert summary.box_source == "track 201" and summary.approved == [4] and summary.replaced == 1
    assert [s["id"] for s in server.patches("delete")[0]["shapes"]] == [107]  # the old tool mask on frame 9
    shapes = strict(server.patches("create")[0]).shapes
    assert sorted(s.frame for s in shapes) == [f for f in range(2, 16) if f != 4]
    truth = moving_box_scene(**SCENE).boxes
    for s in shapes:
        assert s.type.value == "mask" and s.label_id == CAR and s.source == "semi-auto"
        mask = decode_mask(s.points, image_width=320, image_height=240)
        assert iou(mask_to_box(mask), truth[s.frame]) > 0.7, s.frame


def test_propagate_errors_are_clear(settings):
    client, _ = fake_client("annotations_propagate.json")
    engines = MaskEngine.from_settings(settings.masks), CurveVOT.from_settings(settings.tracking)
    with pytest.raises(ValueError, match="frame 6 has 0 masks.*draw the object's mask"):
        sdk_commands.propagate_task(client, TASK, 6, *engines)
    with pytest.raises(ValueError, match="must lie in the range 5..10"):
        sdk_commands.propagate_task(client, TASK, 4, *engines, first=5, last=10)


def test_cvat_command_prints_a_summary(settings, capsys):
    client, _ = fake_client("annotations_track.json")
    args = argparse.Namespace(cvat_command="track", task=TASK, label="car", track_id=None, keep_source=True,
                              tracker="kcf")
    assert sdk_commands.cvat_command(settings, args, client=client) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == TASK and out["anchors"] == 2 and out["removed"] == []


def test_cvat_command_turns_server_refusals_into_clear_errors(settings):
    client, _ = fake_client("annotations_track.json")
    args = argparse.Namespace(cvat_command="track", task=99, label="car", track_id=None, keep_source=False,
                              tracker=None)
    with pytest.raises(RuntimeError, match="task 99: 404"):
        sdk_commands.cvat_command(settings, args, client=client)
    bad = argparse.Namespace(cvat_command="propagate", task=TASK, approved="4,x")
    with pytest.raises(ValueError, match="--approved must be frame numbers"):
        sdk_commands.cvat_command(settings, bad, client=client)
