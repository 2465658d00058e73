"""End to end: a real Label Studio 1.23.2 server calls the ScribbleBox backend for VideoRectangle box tracks.

Everything on the Label Studio side (percent units, 1-based frames, linear interpolation between keyframes)
is re-implemented here on purpose, so the test checks the backend against Label Studio's rules, not its own.
"""
from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import requests

from .conftest import Backend, LabelStudio
from .ls_client import LabelStudioClient

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LABEL_CONFIG = REPO / "config" / "label_studio" / "video_tracks.xml"
FPS = 25
NUM_FRAMES = 50
# A small frame keeps tracking quick; the box crosses most of it. GOP 25: a keyframe mid-video, so backward
# decoding across a keyframe (a correction re-tracks towards the previous anchor) is exercised too.
VIDEO = {"size": (480, 270), "start": (40, 60, 90, 68), "velocity": (4, 1.5), "gop": 25}
PX_EXACT = 0.5  # a box the user placed comes back as placed, up to percent/pixel rounding
PX_UNCHANGED = 1.0


# ---- Label Studio's side, written out independently of the package ---------------------------------------


@dataclass(frozen=True)
class Schema:
    """What the tests need from the labeling config: tag names, the label to apply, where the frame rate comes from."""

    xml: str
    video_name: str
    box_name: str
    label: str
    fps: float
    fps_key: str | None  # frameRate="$key": the task data must carry the frame rate under this key


def load_schema() -> Schema:
    xml = LABEL_CONFIG.read_text()  # the config the project ships, so the test breaks when it does
    root = ET.fromstring(xml)
    video = root.find(".//Video")
    box = root.find(".//VideoRectangle")
    label = root.find(".//Labels/Label")
    assert video is not None and box is not None and label is not None, f"config lacks Video/VideoRectangle/Labels:\n{xml}"
    rate = video.get("frameRate", "")
    assert rate, "the config must set Video frameRate (a number or $key): Label Studio's default (24) misaligns frames"
    fps_key = rate[1:] if rate.startswith("$") else None
    fps = float(FPS if fps_key else rate)
    return Schema(xml, video.get("name"), box.get("name"), label.get("value"), fps, fps_key)


@dataclass(frozen=True)
class Clip:
    path: Path
    gt: np.ndarray  # (N, 4) ground-truth boxes, pixels x, y, w, h, 0-based frames
    width: int
    height: int
    fps: float

    @property
    def n(self) -> int:
        return len(self.gt)


def to_percent(box: np.ndarray, clip: Clip) -> dict:
    x, y, w, h = (float(v) for v in box)
    sx, sy = 100 / clip.width, 100 / clip.height
    return {"x": x * sx, "y": y * sy, "width": w * sx, "height": h * sy}


def to_pixels(item: dict, clip: Clip) -> np.ndarray:
    w, h = clip.width, clip.height
    return np.array([item["x"] * w, item["y"] * h, item["width"] * w, item["height"] * h]) / 100


def keyframe(frame0: int, box: np.ndarray, clip: Clip, enabled: bool = True) -> dict:
    """A sequence item as the Label Studio UI writes it: LS frame = video frame + 1, time of that frame, percent box."""
    return {"frame": frame0 + 1, **to_percent(box, clip), "rotation": 0, "enabled": enabled, "time": frame0 / clip.fps}


def region(rid: str, sequence: list[dict], clip: Clip, schema: Schema) -> dict:
    return {
        "id": rid,
        "from_name": schema.box_name,
        "to_name": schema.video_name,
        "type": "videorectangle",
        "origin": "manual",
        "value": {"framesCount": clip.n, "duration": clip.n / clip.fps, "labels": [schema.label], "sequence": sequence},
    }


def render(sequence: list[dict], clip: Clip) -> np.ndarray:
    """Boxes per video frame as Label Studio draws them: none before the first keyframe, linear between keyframes,
    held after the last; `enabled: false` hides the box after that keyframe until the next one. NaN = no box."""
    out = np.full((clip.n, 4), np.nan)
    items = sorted(sequence, key=lambda k: k["frame"])
    for i, item in enumerate(items):
        f0 = item["frame"] - 1
        if not 0 <= f0 < clip.n:
            continue
        box = to_pixels(item, clip)
        out[f0] = box
        if not item.get("enabled", True):
            continue
        nxt = items[i + 1] if i + 1 < len(items) else None
        stop = min(nxt["frame"] - 1, clip.n) if nxt else clip.n
        for f in range(f0 + 1, stop):
            if nxt is None:
                out[f] = box
            else:
                t = (f - f0) / (nxt["frame"] - 1 - f0)
                out[f] = box + t * (to_pixels(nxt, clip) - box)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row IoU of (N, 4) x, y, w, h boxes; 0 where either box is missing."""
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = inter / union
    return np.nan_to_num(out, nan=0.0)


def find_region(result: list[dict], rid: str) -> dict:
    found = [r for r in result if r.get("id") == rid]
    assert len(found) == 1, f"expected one region with id {rid!r}, got ids {[r.get('id') for r in result]}"
    out = found[0]
    assert out.get("type") == "videorectangle", f"region {rid}: type {out.get('type')!r}"
    seq = out.get("value", {}).get("sequence")
    assert isinstance(seq, list) and seq, f"region {rid}: no keyframes in {out}"
    return out


def assert_follows_gt(sequence: list[dict], clip: Clip, what: str) -> None:
    scores = iou(render(sequence, clip), clip.gt)
    worst = np.argsort(scores)[:5]
    worst_frames = [(int(f), round(float(scores[f]), 3)) for f in worst]
    detail = f"{what}: mean IoU {scores.mean():.3f}, worst frames {worst_frames}, LS keyframes {[k['frame'] for k in sequence]}"
    assert scores.mean() > 0.7, detail
    assert scores.min() > 0.5, detail


def assert_box_at(sequence: list[dict], frame0: int, box: np.ndarray, clip: Clip, what: str) -> None:
    drawn = render(sequence, clip)[frame0]
    message = f"{what}: frame {frame0} draws {drawn.round(2)}, the user placed {np.round(box, 2)}"
    assert np.all(np.abs(drawn - box) <= PX_EXACT), message


def shifted_toward_center(box: np.ndarray, clip: Clip, px: float) -> np.ndarray:
    """The box moved by `px` horizontally, toward the frame centre so it stays inside the frame."""
    centre = box[0] + box[2] / 2
    out = box.copy()
    out[0] += px if centre < clip.width / 2 else -px
    return out


# ---- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema()


@pytest.fixture(scope="module")
def clip(schema: Schema, tmp_path_factory: pytest.TempPathFactory) -> Clip:
    from scribblebox.models.synthetic import make_moving_box_video

    path = tmp_path_factory.mktemp("video") / "moving-box.mp4"
    fps = int(schema.fps) if schema.fps.is_integer() else schema.fps
    gt = np.asarray(make_moving_box_video(path, num_frames=NUM_FRAMES, fps=fps, **VIDEO), dtype=np.float64)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        frames = sum(1 for _ in container.decode(stream))
        rate = float(stream.average_rate)
    assert gt.shape == (NUM_FRAMES, 4) and frames == NUM_FRAMES, f"video has {frames} frames, GT {gt.shape}"
    assert abs(rate - schema.fps) < 1e-6, f"video fps {rate} must equal the labeling config frameRate {schema.fps}"
    return Clip(path, gt, width, height, schema.fps)


@dataclass(frozen=True)
class Project:
    ls: LabelStudioClient
    id: int
    ml_id: int
    task_id: int


def import_task(ls: LabelStudioClient, project_id: int, clip: Clip, schema: Schema) -> int:
    (task_id,) = ls.import_file(project_id, clip.path)
    if schema.fps_key:
        ls.set_task_data(project_id, task_id, **{schema.fps_key: clip.fps})
    return task_id


@pytest.fixture(scope="module")
def project(label_studio: LabelStudio, backend: Backend, schema: Schema, clip: Clip) -> Project:
    ls = label_studio.client()
    project_id = ls.create_project("ScribbleBox e2e", schema.xml)["id"]
    task_id = import_task(ls, project_id, clip, schema)
    ml = ls.register_ml_backend(project_id, backend.url)
    assert ml.get("state") == "CO", f"Label Studio could not connect the backend (/health, /setup): {ml}"
    return Project(ls, project_id, ml["id"], task_id)


# ---- tests ------------------------------------------------------------------------------------------------


def test_registration_creates_webhook(project: Project, backend: Backend) -> None:
    hooks = project.ls.webhooks(project.id)
    urls = [h.get("url", "").rstrip("/") for h in hooks]
    assert f"{backend.url}/webhook" in urls, f"no webhook to the backend (needs SSRF_PROTECTION_ENABLED=false): {hooks}"


def test_one_box_becomes_a_track_of_keyframes(project: Project, clip: Clip, schema: Schema) -> None:
    sent = region("single", [keyframe(0, clip.gt[0], clip)], clip, schema)
    data = project.ls.interactive(project.ml_id, project.task_id, [sent])
    out = find_region(data.get("result", []), "single")
    seq = out["value"]["sequence"]
    assert out["from_name"] == schema.box_name and out["to_name"] == schema.video_name, out
    assert out["value"].get("labels") == [schema.label], f"labels lost: {out['value'].get('labels')}"
    assert len(seq) >= 2, f"one box should become a track of several keyframes, got {seq}"
    assert all(1 <= k["frame"] <= clip.n for k in seq), f"keyframes outside LS frames 1..{clip.n}: {[k['frame'] for k in seq]}"
    assert_box_at(seq, 0, clip.gt[0], clip, "the user's box")
    assert_follows_gt(seq, clip, "interactive track")


def test_correction_changes_the_track_only_near_it(project: Project, clip: Clip, schema: Schema) -> None:
    ls, rid = project.ls, "corrected"

    def call(sequence: list[dict]) -> list[dict]:
        data = ls.interactive(project.ml_id, project.task_id, [region(rid, sequence, clip, schema)])
        return find_region(data.get("result", []), rid)["value"]["sequence"]

    first = call([keyframe(0, clip.gt[0], clip)])

    # Anchor a quarter in (on a frame that is not a keyframe yet), so that frames before it are "far" later on.
    taken = {k["frame"] - 1 for k in first}
    a = next(f for f in range(clip.n // 4, clip.n // 2) if f not in taken)
    box_a = shifted_toward_center(clip.gt[a], clip, 6)
    second = call(copy.deepcopy(first) + [keyframe(a, box_a, clip)])
    assert_box_at(second, 0, clip.gt[0], clip, "first anchor after a correction")
    assert_box_at(second, a, box_a, clip, "correction at a quarter")

    # The correction under test: three quarters in, the box moved 15 px off the object.
    c = 3 * clip.n // 4
    box_c = shifted_toward_center(clip.gt[c], clip, 15)
    edited = [k for k in copy.deepcopy(second) if k["frame"] - 1 != c] + [keyframe(c, box_c, clip)]
    third = call(sorted(edited, key=lambda k: k["frame"]))
    assert_box_at(third, c, box_c, clip, "the corrected frame")
    assert_box_at(third, a, box_a, clip, "the earlier anchor")

    before, after = render(second, clip)[: a + 1], render(third, clip)[: a + 1]
    moved = np.nanmax(np.abs(after - before), axis=1)
    assert not np.isnan(after).any() and np.all(moved <= PX_UNCHANGED), (
        f"frames 0..{a} lie outside the segments next to the correction at {c} but moved by up to "
        f"{np.nanmax(moved):.2f} px (frames {np.flatnonzero(~(moved <= PX_UNCHANGED)).tolist()})"
    )


def test_two_objects_come_back_as_two_regions(project: Project, clip: Clip, schema: Schema) -> None:
    w, h = clip.width, clip.height
    static = np.array([0.05 * w, 0.05 * h, 0.2 * w, 0.2 * h])
    sent = [
        region("obj-moving", [keyframe(0, clip.gt[0], clip)], clip, schema),
        region("obj-static", [keyframe(0, static, clip)], clip, schema),
    ]
    data = project.ls.interactive(project.ml_id, project.task_id, sent)
    result = data.get("result", [])
    ids = sorted(r.get("id") for r in result if r.get("type") == "videorectangle")
    assert ids == ["obj-moving", "obj-static"], f"expected one region per object, got {ids}"
    moving = find_region(result, "obj-moving")["value"]["sequence"]
    still = find_region(result, "obj-static")["value"]["sequence"]
    assert_box_at(moving, 0, clip.gt[0], clip, "moving object's anchor")
    assert_box_at(still, 0, static, clip, "static object's anchor")
    assert_follows_gt(moving, clip, "moving object next to another")


def test_batch_predictions_turn_an_annotation_into_a_track(project: Project, clip: Clip, schema: Schema) -> None:
    ls = project.ls
    task_id = import_task(ls, project.id, clip, schema)
    saved = region("batch-obj", [keyframe(0, clip.gt[0], clip)], clip, schema)
    ls.create_annotation(task_id, [saved])

    answer = ls.retrieve_predictions(project.id)
    assert answer.get("processed_items", 0) >= 1, f"retrieve_tasks_predictions did nothing: {answer}"
    predictions = ls.predictions(task_id)
    assert predictions, f"Label Studio stored no prediction for task {task_id} (see the backend log)"
    result = [r for p in predictions for r in p.get("result", [])]
    assert result, f"the backend predicted nothing for the annotated task: {predictions}"
    out = find_region(result, "batch-obj")
    seq = out["value"]["sequence"]
    assert len(seq) >= 2, f"the prediction should be a full track, got keyframes {seq}"
    assert_box_at(seq, 0, clip.gt[0], clip, "annotated box in the prediction")
    assert_follows_gt(seq, clip, "batch prediction")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('{"tasks": "not a list"}', id="tasks-not-a-list"),
        pytest.param(
            '{"tasks": [{"id": 1, "data": {}}], "params": {"context": {"result": [{"type": "videorectangle"}]}}}',
            id="bad-region",
        ),
    ],
)
def test_malformed_predict_gets_a_json_4xx(backend: Backend, body: str) -> None:
    response = requests.post(f"{backend.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    payload = response.json()
    assert isinstance(payload, dict) and payload.get("error"), f"a 4xx should say what is wrong: {payload}"
    assert "Traceback" not in response.text
