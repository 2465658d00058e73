"""The nuclio functions, called as nuclio calls them (`nuclio_sdk.test.Platform`, which runs init_context first),
with the request bodies CVAT's lambda manager posts; tracker states go through JSON and a timestamp signature
and back, as CVAT's server does with them between frames."""
from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import nuclio_sdk
import nuclio_sdk.test
import numpy as np
import pytest
import yaml
from cvat_sdk.masks import decode_mask, encode_mask
from itsdangerous import TimestampSigner

from scribblebox.backend.cvat import nuclio_functions
from scribblebox.models.geometry import iou, mask_to_box
from scribblebox.models.synthetic import moving_box_scene

NUCLIO = Path(__file__).parent.parent / "backend" / "cvat" / "nuclio"
SCENE = moving_box_scene(30, size=(320, 240), start=(40, 60, 64, 48), velocity=(3, 1), seed=5)
STATIC = np.array([230.0, 150.0, 50.0, 50.0])  # a patch of the static background: a second object that stays put


def load_main(name: str):
    spec = importlib.util.spec_from_file_location(f"cvat_nuclio_{name}_main", NUCLIO / name / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # nuclio_sdk's Platform finds init_context through sys.modules
    spec.loader.exec_module(module)
    return module


def b64(image: np.ndarray, ext: str = ".jpg") -> str:
    return base64.b64encode(cv2.imencode(ext, image)[1].tobytes()).decode()


def rect(box) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def as_box(points) -> np.ndarray:
    return np.array([points[0], points[1], points[2] - points[0], points[3] - points[1]])


def call(platform, handler, body) -> tuple[int, object]:
    response = platform.call_handler(handler, nuclio_sdk.Event(body=body, content_type="application/json"))
    assert response.content_type == "application/json"
    return response.status_code, json.loads(response.body)


@pytest.fixture(scope="module")
def interactor():
    return nuclio_sdk.test.Platform(), load_main("interactor").handler


@pytest.fixture(scope="module")
def tracker():
    return nuclio_sdk.test.Platform(), load_main("tracker").handler


def test_interactor_mask_covers_the_object(interactor):
    platform, handler = interactor
    frame, box = SCENE.render(0), SCENE.boxes[0]
    x, y, w, h = box
    status, out = call(platform, handler, {"image": b64(frame), "pos_points": [[x + w / 2, y + h / 2]],
                                           "neg_points": [[x - 8, y - 8]], "obj_bbox": [[x, y], [x + w, y + h]]})
    assert status == 200 and set(out) == {"mask", "bounds", "points"}
    left, top, right, bottom = out["bounds"]
    crop = np.array(out["mask"])
    assert crop.shape == (bottom - top + 1, right - left + 1) and set(np.unique(crop)) <= {0, 255}
    # what CVAT's UI builds from the answer: RLE of the flattened crop, then the bounds
    full = np.zeros(frame.shape[:2], bool)
    full[top:bottom + 1, left:right + 1] = crop > 0
    assert np.array_equal(decode_mask(encode_mask(full), image_width=320, image_height=240), full)
    assert iou(mask_to_box(full), box) > 0.9
    truth = np.zeros_like(full)
    truth[int(y):int(y + h), int(x):int(x + w)] = True
    assert (full & truth).sum() / truth.sum() > 0.95 and (full & ~truth).sum() / truth.sum() < 0.05
    polygon = np.array(out["points"])
    assert polygon.shape[1] == 2 and polygon[:, 0].min() >= left and polygon[:, 1].max() <= bottom


def test_interactor_with_clicks_only(interactor):
    platform, handler = interactor
    x, y, w, h = SCENE.boxes[3]
    clicks = [[x + w * 0.25, y + h * 0.25], [x + w * 0.75, y + h * 0.75]]
    body = json.dumps({"image": b64(SCENE.render(3), ".png"), "pos_points": clicks, "neg_points": [], "obj_bbox": None})
    status, out = call(platform, handler, body.encode())  # a body nuclio did not parse: bytes of JSON
    assert status == 200
    left, top, right, bottom = out["bounds"]
    assert iou(np.array([left, top, right - left + 1, bottom - top + 1]), SCENE.boxes[3]) > 0.5


def test_interactor_builds_its_engine_once(monkeypatch):
    built = []
    original = nuclio_functions.Interactor.from_settings
    monkeypatch.setattr(nuclio_functions.Interactor, "from_settings",
                        classmethod(lambda cls, s: built.append(1) or original.__func__(cls, s)))
    platform, handler = nuclio_sdk.test.Platform(), load_main("interactor").handler
    x, y, w, h = SCENE.boxes[0]
    body = {"image": b64(SCENE.render(0)), "pos_points": [[x + w / 2, y + h / 2]], "neg_points": []}
    assert call(platform, handler, body)[0] == 200 and call(platform, handler, body)[0] == 200
    assert built == [1]


def test_tracker_follows_objects_frame_by_frame_through_signed_states(tracker):
    platform, handler = tracker
    signer = TimestampSigner("cvat-secret-key", salt="cvat-tracker-state:scribblebox-tracker")
    status, out = call(platform, handler, {"image": b64(SCENE.render(0)),
                                           "shapes": [rect(SCENE.boxes[0]), rect(STATIC)], "states": []})
    assert status == 200 and out["shapes"] == [rect(SCENE.boxes[0]), rect(STATIC)]
    for frame in range(1, len(SCENE.boxes)):
        signed = [signer.sign(json.dumps(s, separators=(",", ":"))) for s in out["states"]]
        assert max(len(s) for s in signed) < 8000  # the whole state crosses the browser every frame
        states = [json.loads(signer.unsign(s, max_age=8 * 3600)) for s in signed]
        status, out = call(platform, handler, {"image": b64(SCENE.render(frame)), "shapes": [None, None],
                                               "states": states})
        assert status == 200
        for got, truth in zip(out["shapes"], (SCENE.boxes[frame], STATIC), strict=True):
            assert got is not None and iou(as_box(got), truth) > 0.8, frame


def test_tracker_accepts_old_ui_bodies_and_shape_objects(tracker):
    platform, handler = tracker
    _, start = call(platform, handler, {"image": b64(SCENE.render(0)),
                                        "shapes": [{"type": "rectangle", "points": rect(SCENE.boxes[0])}]})
    # an old UI sends the previous shapes along with the states: the states win
    status, out = call(platform, handler, {"image": b64(SCENE.render(1)), "shapes": [rect(SCENE.boxes[0])],
                                           "states": start["states"]})
    assert status == 200 and iou(as_box(out["shapes"][0]), SCENE.boxes[1]) > 0.8


def garbled_state(tracker, **change) -> dict:
    platform, handler = tracker
    _, out = call(platform, handler, {"image": b64(SCENE.render(0)), "shapes": [rect(SCENE.boxes[0])]})
    return {**out["states"][0], **change}


@pytest.mark.parametrize("body, message", [
    ({"pos_points": [[1, 1]], "neg_points": []}, '"image" is missing'),
    ({"image": "not base64 at all!", "pos_points": [[1, 1]]}, "not valid base64"),
    ({"image": base64.b64encode(b"GIF89a garbage").decode(), "pos_points": [[1, 1]]}, "not a JPEG or PNG"),
    ({"image": "IMAGE", "pos_points": [[400, 10]], "neg_points": []}, "outside the 320x240 image"),
    ({"image": "IMAGE", "pos_points": [[10, "a"]]}, "finite number"),
    ({"image": "IMAGE", "pos_points": [], "neg_points": []}, "at least one positive point or a box"),
    ({"image": "IMAGE", "pos_points": [[5, 5]], "obj_bbox": [[500, 500], [600, 600]]}, "outside the 320x240"),
    (b"{not json", "not JSON"),
    ([1, 2], "must be a JSON object"),
])
def test_interactor_refuses_bad_input_with_400(interactor, body, message):
    platform, handler = interactor
    if isinstance(body, dict) and body.get("image") == "IMAGE":
        body = {**body, "image": b64(SCENE.render(0))}
    status, out = call(platform, handler, body)
    assert status == 400 and message in out["error"]


@pytest.mark.parametrize("case, message", [
    ("missing image", '"image" is missing'),
    ("nothing", "nothing to track"),
    ("polygon", "rectangles only"),
    ("neither", "neither a shape nor a state"),
    ("version", "not a state this tracker wrote (version 7"),
    ("garbled patch", "not a state this tracker wrote"),
    ("not a dict", "not a state this tracker wrote"),
    ("bad box", "garbled box"),
    ("other size", "start tracking again"),
])
def test_tracker_refuses_bad_input_with_400(tracker, case, message):
    platform, handler = tracker
    image = b64(SCENE.render(1))
    bodies = {
        "missing image": {"shapes": [rect(SCENE.boxes[0])]},
        "nothing": {"image": image, "shapes": [], "states": []},
        "polygon": {"image": image, "shapes": [{"type": "polygon", "points": [1, 1, 5, 5, 1, 5]}]},
        "neither": {"image": image, "shapes": [None], "states": [None]},
        "version": {"image": image, "states": [garbled_state(tracker, v=7)]},
        "garbled patch": {"image": image, "states": [garbled_state(tracker, patch="%%%")]},
        "not a dict": {"image": image, "states": ["eyJ2IjoxfQ"]},
        "bad box": {"image": image, "states": [garbled_state(tracker, box=[0, 0, -5, 10])]},
        "other size": {"image": b64(cv2.resize(SCENE.render(1), (160, 120))), "states": [garbled_state(tracker)]},
    }
    status, out = call(platform, handler, bodies[case])
    assert status == 400 and message in out["error"], out


def test_a_failure_of_ours_is_a_500_json_not_a_crash(tracker, monkeypatch):
    platform, handler = tracker

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(nuclio_functions, "previous_frame", broken)
    status, out = call(platform, handler, {"image": b64(SCENE.render(1)), "states": [garbled_state(tracker)]})
    assert status == 500 and out == {"error": "internal error", "detail": "RuntimeError"}


@pytest.mark.parametrize("name", ["interactor", "tracker"])
def test_function_yamls_are_deployable_shapes(name):
    cpu = yaml.safe_load((NUCLIO / name / "function.yaml").read_text())
    gpu = yaml.safe_load((NUCLIO / name / "function-gpu.yaml").read_text())
    for config in (cpu, gpu):
        notes = config["metadata"]["annotations"]
        assert notes["type"] == name and config["metadata"]["namespace"] == "cvat"
        assert config["spec"]["handler"] == "main:handler"
        install = " ".join(d["value"] for d in config["spec"]["build"]["directives"]["postCopy"])
        assert "pip install" in install and "/opt/nuclio/wheels/scribblebox-" in install
        if name == "interactor":
            assert int(notes["version"]) == 2 and notes["startswith_box_optional"] == "true"
    assert gpu["spec"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["spec"]["triggers"]["myHttpTrigger"]["maxWorkers"] == 1
    assert cpu["metadata"]["name"] != gpu["metadata"]["name"]
