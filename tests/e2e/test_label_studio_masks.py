"""End to end: masks inside a box track with a real Label Studio 1.23.2 and the shipped video_masks.xml.

`scribblebox import-video` creates the task (video + frame images), a box becomes a track, a click becomes masks
on every frame, and a saved brush correction comes back through the webhook's background job as a new prediction.
The brush RLE is checked with our decoder (the SDK's agreement with it is tests/test_brush.py's job).
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scribblebox.backend.label_studio.brush import decode_mask, encode_mask
from scribblebox.backend.label_studio.posting import post_prediction
from scribblebox.backend.media import LabelStudioSession
from scribblebox.importer import import_video

from .conftest import Backend, LabelStudio
from .ls_client import LabelStudioClient

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LABEL_CONFIG = REPO / "config" / "label_studio" / "video_masks.xml"
FPS = 25
NUM_FRAMES = 30
VIDEO = {"size": (320, 180), "start": (40, 50, 80, 60), "velocity": (4, 1.0), "gop": 25}
CLICKED = 5  # the frame the user clicks
CORRECTED = 20  # the frame the user fixes with the brush
JOB_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Names:
    xml: str
    video: str
    box: str
    frames: str
    brush: str
    clicks: str
    label: str


def load_names() -> Names:
    xml = LABEL_CONFIG.read_text()
    root = ET.fromstring(xml)
    found = {tag: root.find(f".//{tag}") for tag in ("Video", "VideoRectangle", "BrushLabels", "KeyPointLabels")}
    image = next((el for el in root.iter("Image") if el.get("valueList")), None)
    assert image is not None and all(v is not None for v in found.values()), f"config lacks a mask part:\n{xml}"
    assert found["Video"].get("frameRate") == "$fps", "the importer writes the frame rate as task data 'fps'"
    label = found["KeyPointLabels"].find("Label").get("value")
    brush_labels = [el.get("value") for el in found["BrushLabels"].iter("Label")]
    assert label in brush_labels, "a click's label must also be a brush label: objects are matched by label"
    return Names(xml, found["Video"].get("name"), found["VideoRectangle"].get("name"), image.get("name"),
                 found["BrushLabels"].get("name"), found["KeyPointLabels"].get("name"), label)


@dataclass(frozen=True)
class Clip:
    path: Path
    gt: np.ndarray  # (N, 4) pixels
    width: int
    height: int

    def gt_mask(self, frame: int) -> np.ndarray:
        """The synthetic object is a filled rectangle: its mask is its box (pixels whose centre lies inside)."""
        x, y, w, h = self.gt[frame]
        cols, rows = np.arange(self.width) + 0.5, np.arange(self.height) + 0.5
        return ((rows >= y) & (rows < y + h))[:, None] & ((cols >= x) & (cols < x + w))[None, :]


@dataclass(frozen=True)
class Setup:
    ls: LabelStudioClient
    names: Names
    clip: Clip
    project_id: int
    ml_id: int
    task_id: int


def mask_project(label_studio: LabelStudio, backend_url: str, title: str, folder: Path, num_frames: int,
                 ) -> tuple[Names, Clip, int, int, dict]:
    """A project with the shipped mask config, one task made by `import_video` from a synthetic moving-box clip of
    `num_frames` frames, and the backend at `backend_url` registered: (names, clip, project id, task id, ML backend)."""
    from scribblebox.models.synthetic import make_moving_box_video

    names = load_names()
    path = folder / "moving-box.mp4"
    gt = np.asarray(make_moving_box_video(path, num_frames=num_frames, fps=FPS, **VIDEO), dtype=np.float64)
    clip = Clip(path, gt, *VIDEO["size"])
    ls = label_studio.client()
    project_id = ls.create_project(title, names.xml)["id"]
    task_id = import_video(path, label_studio.url, label_studio.token, project_id)
    return names, clip, project_id, task_id, ls.register_ml_backend(project_id, backend_url)


@pytest.fixture(scope="module")
def setup(label_studio: LabelStudio, backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    names, clip, project_id, task_id, ml = mask_project(label_studio, backend.url, "ScribbleBox masks e2e",
                                                        tmp_path_factory.mktemp("masks-video"), NUM_FRAMES)
    assert ml.get("state") == "CO", f"Label Studio could not connect the backend: {ml}"
    return Setup(label_studio.client(), names, clip, project_id, ml["id"], task_id)


def box_region(s: Setup) -> dict:
    x, y, w, h = s.clip.gt[0]
    sx, sy = 100 / s.clip.width, 100 / s.clip.height
    return {"id": "mask-track", "from_name": s.names.box, "to_name": s.names.video, "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": NUM_FRAMES, "duration": NUM_FRAMES / FPS, "labels": [s.names.label],
                      "sequence": [{"frame": 1, "x": x * sx, "y": y * sy, "width": w * sx, "height": h * sy,
                                    "rotation": 0, "enabled": True, "time": 0.0}]}}


def click(s: Setup, frame: int) -> dict:
    """A smart keypoint as the editor sends it: on page `frame` of the image list, percent coordinates."""
    x, y, w, h = s.clip.gt[frame]
    return {"id": "click-1", "from_name": s.names.clicks, "to_name": s.names.frames, "type": "keypointlabels",
            "origin": "manual", "original_width": s.clip.width, "original_height": s.clip.height, "image_rotation": 0,
            "item_index": frame, "is_positive": True,
            "value": {"x": (x + w / 2) / s.clip.width * 100, "y": (y + h / 2) / s.clip.height * 100, "width": 0.5,
                      "keypointlabels": [s.names.label]}}


def decode_all(s: Setup, result: list[dict]) -> dict[int, np.ndarray]:
    masks = {}
    for r in result:
        if r.get("type") != "brushlabels":
            continue
        assert r["from_name"] == s.names.brush and r["to_name"] == s.names.frames, r
        assert (r["original_width"], r["original_height"]) == (s.clip.width, s.clip.height), r
        assert r["value"]["brushlabels"] == [s.names.label] and r["value"]["format"] == "rle"
        masks[r["item_index"]] = decode_mask(r["value"]["rle"], r["original_width"], r["original_height"])
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def first_masks(setup: Setup) -> tuple[dict, dict[int, np.ndarray]]:
    s = setup
    tracked = s.ls.interactive(s.ml_id, s.task_id, [box_region(s)])
    (track,) = [r for r in tracked["result"] if r.get("type") == "videorectangle"]
    answer = s.ls.interactive(s.ml_id, s.task_id, [click(s, CLICKED)])
    return track, answer


def test_import_video_creates_one_task_with_frames(setup: Setup) -> None:
    (task,) = [t for t in setup.ls.tasks(setup.project_id) if t["id"] == setup.task_id]
    data = task["data"]
    assert data["fps"] == FPS and data.get("frame_step", 1) == 1 and len(data["frames"]) == NUM_FRAMES
    assert data["video"].startswith("/data/upload/") and all(u.startswith("/data/upload/") for u in data["frames"])
    image = setup.ls.session.get(setup.ls.url + data["frames"][3], timeout=30)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8", "frame images are served as JPEG"
    assert len(setup.ls.tasks(setup.project_id)) == 1, "uploading the files created no extra tasks"


def test_click_gives_a_mask_on_every_frame(setup: Setup, first_masks) -> None:
    _, answer = first_masks
    masks = decode_all(setup, answer.get("result", []))
    assert sorted(masks) == list(range(NUM_FRAMES)), f"masks for pages {sorted(masks)}"
    scores = [iou(masks[f], setup.clip.gt_mask(f)) for f in range(NUM_FRAMES)]
    worst = sorted(range(NUM_FRAMES), key=lambda f: scores[f])[:5]
    detail = f"mean IoU {np.mean(scores):.3f}, worst {[(f, round(scores[f], 3)) for f in worst]}"
    assert min(scores) > 0.5 and np.mean(scores) > 0.7, detail


def test_saved_correction_is_repropagated_and_posted(setup: Setup, first_masks) -> None:
    s = setup
    track, answer = first_masks
    before = decode_all(s, answer["result"])
    fix = s.clip.gt_mask(CORRECTED)
    if iou(fix, before[CORRECTED]) > 0.98:  # already right there: correct it to something clearly different
        x, y, w, h = s.clip.gt[CORRECTED]
        fix[:, int(x + 0.75 * w):] = False
    saved = []
    for r in answer["result"]:
        r = {**r, "value": dict(r["value"])}
        if r.get("item_index") == CORRECTED:
            r["value"]["rle"] = encode_mask(fix)
        saved.append(r)
    s.ls.create_annotation(s.task_id, [track, click(s, CLICKED), *saved])  # ANNOTATION_CREATED -> webhook -> job

    deadline, predictions = time.monotonic() + JOB_TIMEOUT_S, []
    while time.monotonic() < deadline and not predictions:
        predictions = [p for p in s.ls.predictions(s.task_id) if any(r.get("type") == "brushlabels" for r in p["result"])]
        time.sleep(0.5)
    assert predictions, f"no prediction posted within {JOB_TIMEOUT_S:.0f} s (see the backend log)"
    after = decode_all(s, predictions[-1]["result"])
    assert sorted(after) == list(range(NUM_FRAMES))
    assert np.array_equal(after[CORRECTED], fix), "the correction comes back as the user drew it"
    neighbours = [f for f in range(CORRECTED - 3, CORRECTED + 4) if f != CORRECTED]
    changed = [f for f in neighbours if not np.array_equal(after[f], before[f])]
    assert len(changed) >= 2, f"neighbours of frame {CORRECTED} unchanged after the correction: changed {changed}"
    assert any(r.get("type") == "videorectangle" for r in predictions[-1]["result"]), "the box track is kept"

    # A retried job (its worker died after Label Studio stored the prediction) posts the same prediction again:
    # Label Studio says it already holds it, so the annotator does not get a second copy.
    session = LabelStudioSession(s.ls.url, s.ls.session.headers["Authorization"].split()[-1])
    count = len(s.ls.predictions(s.task_id))
    again = {k: predictions[-1][k] for k in ("result", "model_version", "score")}
    assert post_prediction(session, s.task_id, again) is False
    assert len(s.ls.predictions(s.task_id)) == count
