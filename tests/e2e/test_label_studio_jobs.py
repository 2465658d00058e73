"""End to end: the backend's background jobs with a real Label Studio 1.23.2.

- Long videos: on a video longer than server.window_frames, an interactive box answers only a window around the
  drawn frame within server.predict_deadline_s, and a `complete` job (GET /jobs: progress, then done) posts the
  track of the whole video to Label Studio as a prediction.
- fit: Label Studio's Train button (POST /api/ml/{id}/train -> START_TRAINING) queues a `train` job that fine-tunes
  the mask model on the project's submitted brush masks; the registry's recorded decision decides what /setup and
  Label Studio then report as the model version.

One backend serves both (this module's `backend` replaces the session one): window_frames 60 and a tiny random-init
mask checkpoint written here as training.base_checkpoint.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import yaml
from scribblebox.backend.label_studio.brush import brush_result
from scribblebox.models.geometry import mask_to_box
from scribblebox.models.synthetic import make_moving_box_video, write_video

from scribblebox.importer import import_video

from .conftest import Backend, LabelStudio, running_backend
from .test_label_studio_masks import Names, load_names
from .test_label_studio_tracks import (
    Clip,
    assert_box_at,
    assert_follows_gt,
    find_region,
    import_task,
    iou,
    keyframe,
    load_schema,
    region,
    render,
)

pytestmark = pytest.mark.e2e

FPS = 25
WINDOW = 60  # server.window_frames
DEADLINE_S = 30.0  # SCRIBBLEBOX_PREDICT_DEADLINE_S
# 300 frames: five windows. The box crosses most of the small frame and stays inside it.
LONG = {"num_frames": 300, "size": (320, 180), "start": (20, 60, 56, 42), "velocity": (0.8, 0.2), "gop": 25}
DRAWN = 150  # the video frame the user draws the box on: the window is frames 120..179
FIT_TASKS = 4
FIT_FRAMES, FIT_EVERY, FIT_SIZE = 16, 4, (160, 120)
FIT_PAGES = FIT_FRAMES // FIT_EVERY  # frame images of video frames 0, 4, 8, 12: a brush mask on each
FIT_ITERS = 30
JOB_TIMEOUT_S = 150.0
SETUP_PROJECT_TS = "1700000000"  # Label Studio sends "<project>.<created timestamp>" to /setup


# ---- the backend, configured for both features -----------------------------------------------------------------


def tiny_checkpoint(path: Path) -> Path | None:
    """A random-init tiny ScribbleBoxModel (as tests/test_fit.py builds one); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    from scribblebox.models.networks.checkpoint import save_checkpoint
    from scribblebox.models.networks.config import NetConfig
    from scribblebox.models.networks.model import ScribbleBoxModel

    tiny = NetConfig(name="tiny", stem=8, widths=(8, 16, 24), blocks=(1, 1, 1), decoder=(16, 16, 8), gc_kernel=3,
                     embedding=8)
    torch.manual_seed(0)
    return save_checkpoint(path, ScribbleBoxModel(tiny), stage="interactive", iteration=0, metrics={},
                           train_args={"crop": 64, "margin": 0.2})


@pytest.fixture(scope="module")
def backend(label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp("jobs-backend")
    base = tiny_checkpoint(root / "base-v001.pt")
    training = {"fit_iters": FIT_ITERS, "fit_batch": 4, "fit_holdout": 0.25, "fit_lr_max": 0.01}
    if base is not None:
        training["base_checkpoint"] = str(base)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"server": {"window_frames": WINDOW}, "training": training}))
    env = {"SCRIBBLEBOX_PREDICT_DEADLINE_S": str(DEADLINE_S),
           "OMP_NUM_THREADS": "1"}  # tiny tensors: torch's thread pool only fights the other processes for 2 cores
    with running_backend(label_studio, root, config, env) as server:
        yield server


def watch_job(backend: Backend, kind: str, project: int, key: int) -> tuple[dict, list[tuple[str, float, str]]]:
    """Poll GET /jobs until the job is done or failed: (its last row, every (status, progress, message) seen)."""
    seen: list[tuple[str, float, str]] = []
    row: dict | None = None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = requests.get(f"{backend.url}/jobs", timeout=10).json()["jobs"]
        row = next((r for r in rows if (r["kind"], r["project"], r["key"]) == (kind, str(project), str(key))), row)
        if row is not None:
            state = (row["status"], float(row["progress"]), row.get("message") or "")
            if not seen or seen[-1] != state:
                seen.append(state)
            if row["status"] in ("done", "failed"):
                return row, seen
        time.sleep(0.1)
    pytest.fail(f"{kind} job {project}/{key} not finished within {JOB_TIMEOUT_S:.0f} s; last row {row}, seen {seen}")


def setup_version(backend: Backend, project: int) -> str:
    body = {"project": f"{project}.{SETUP_PROJECT_TS}"}
    return requests.post(f"{backend.url}/setup", json=body, timeout=10).json()["model_version"]


# ---- long videos ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    path = tmp_path_factory.mktemp("long-video") / "long-moving-box.mp4"
    gt = np.asarray(make_moving_box_video(path, fps=FPS, **LONG), dtype=np.float64)
    width, height = LONG["size"]
    return Clip(path, gt, width, height, float(FPS))


def test_long_video_answers_a_window_now_and_posts_the_whole_track_later(
        label_studio: LabelStudio, backend: Backend, long_clip: Clip) -> None:
    clip, schema, ls = long_clip, load_schema(), label_studio.client()
    project_id = ls.create_project("ScribbleBox long video e2e", schema.xml)["id"]
    task_id = import_task(ls, project_id, clip, schema)
    ml = ls.register_ml_backend(project_id, backend.url)
    assert ml.get("state") == "CO", f"Label Studio could not connect the backend: {ml}"

    began = time.monotonic()
    drawn = region("long-obj", [keyframe(DRAWN, clip.gt[DRAWN], clip)], clip, schema)
    data = ls.interactive(ml["id"], task_id, [drawn])
    seconds = time.monotonic() - began
    seq = find_region(data.get("result", []), "long-obj")["value"]["sequence"]
    start, stop = DRAWN - WINDOW // 2, DRAWN + WINDOW // 2  # video frames [start, stop): LS frames start+1..stop
    frames = sorted(k["frame"] for k in seq)
    assert seconds < DEADLINE_S, f"the interactive answer took {seconds:.1f} s (server.predict_deadline_s {DEADLINE_S})"
    assert len(frames) >= 2 and start + 1 <= frames[0] and frames[-1] <= stop, (
        f"interactive keyframes {frames} must be tracked keyframes inside the window (LS frames {start + 1}..{stop})")
    assert_box_at(seq, DRAWN, clip.gt[DRAWN], clip, "the drawn box")
    scores = iou(render(seq, clip)[start:stop], clip.gt[start:stop])
    assert scores.min() > 0.5 and scores.mean() > 0.7, f"window IoU mean {scores.mean():.3f}, min {scores.min():.3f}"
    assert any("/jobs" in w for w in data.get("warnings", [])), f"the answer should say the rest follows: {data}"

    row, seen = watch_job(backend, "complete", project_id, task_id)
    assert row["status"] == "done" and row["progress"] == 1.0, f"complete job: {row}; seen {seen}"
    assert "posted the prediction" in row["message"], row
    assert any(s == "running" and 0 < p < 1 for s, p, _ in seen), f"no progress seen while it ran: {seen}"

    predictions = [p for p in ls.predictions(task_id) if any(r.get("id") == "long-obj" for r in p["result"])]
    assert len(predictions) == 1, f"expected the job's one prediction, got {predictions}"
    full = find_region(predictions[0]["result"], "long-obj")["value"]["sequence"]
    frames = sorted(k["frame"] for k in full)
    assert frames[0] <= start // 2 and frames[-1] >= stop + (clip.n - stop) // 2, (
        f"the posted keyframes {frames} should span the whole video (LS frames 1..{clip.n}), not only the window")
    assert_box_at(full, DRAWN, clip.gt[DRAWN], clip, "the drawn box in the posted track")
    assert_follows_gt(full, clip, "the posted track of the whole video")
    probes = [0, 60, DRAWN, 240, clip.n - 1]
    at = iou(render(full, clip)[probes], clip.gt[probes])
    assert np.all(at > 0.6), f"IoU at frames {probes}: {at.round(3).tolist()}"


# ---- fit: the Train button ------------------------------------------------------------------------------------


def ellipse_scene(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """tests/test_fit.py's scene: a red ellipse moving over a dark texture (frames, bool masks). Not box-shaped, so a
    model that only fills the box scores low on it and fine-tuning has something to learn."""
    width, height = FIT_SIZE
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    texture[..., 2] //= 4
    frames, masks = [], []
    for f in range(FIT_FRAMES):
        image, mask = texture.copy(), np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (40 + 3 * f + 8 * seed, 50 + f), (20 + 2 * seed, 13), 10.0 * f, 0, 360, 1, -1)
        image[mask > 0] = (30, 30, 220)
        frames.append(image)
        masks.append(mask.astype(bool))
    return frames, masks


def annotated_mask_task(ls_url: str, token: str, project_id: int, names: Names, folder: Path,
                        seed: int) -> tuple[int, list]:
    """One task made like the masks test (`import_video`: video + frame images) and its submitted result: a box
    track and the true mask of the object on every frame image."""
    frames, masks = ellipse_scene(seed)
    path = write_video(folder / f"fit-{seed}.mp4", frames, fps=FPS)
    task_id = import_video(path, ls_url, token, project_id, every=FIT_EVERY)
    (width, height), (x, y, w, h) = FIT_SIZE, mask_to_box(masks[0])
    sx, sy = 100 / width, 100 / height
    first = {"frame": 1, "x": x * sx, "y": y * sy, "width": w * sx, "height": h * sy, "rotation": 0, "enabled": True,
             "time": 0.0}
    track = {"id": f"track-{seed}", "from_name": names.box, "to_name": names.video, "type": "videorectangle",
             "origin": "manual", "value": {"framesCount": FIT_FRAMES, "duration": FIT_FRAMES / FPS,
                                           "labels": [names.label], "sequence": [first]}}
    brushes = [brush_result(masks[page * FIT_EVERY], page, names.label, names.brush, names.frames, f"m{seed}-{page}")
               for page in range(FIT_PAGES)]
    return task_id, [track, *brushes]


def test_train_button_fine_tunes_the_project_mask_model(label_studio: LabelStudio, backend: Backend,
                                                         tmp_path: Path) -> None:
    pytest.importorskip("torch")
    names, ls = load_names(), label_studio.client()
    project_id = ls.create_project("ScribbleBox fit e2e", names.xml)["id"]
    for seed in range(FIT_TASKS):
        task_id, result = annotated_mask_task(label_studio.url, label_studio.token, project_id, names, tmp_path, seed)
        ls.create_annotation(task_id, result)
    # Registered after the annotations: their webhooks would queue mask re-propagation jobs this test does not need.
    ml = ls.register_ml_backend(project_id, backend.url)
    assert ml.get("state") == "CO", f"Label Studio could not connect the backend: {ml}"
    base_version = ml["model_version"]
    assert base_version and "-ft-" not in base_version, ml

    ls.train(ml["id"])  # the Train button
    row, seen = watch_job(backend, "train", project_id, project_id)
    assert row["status"] == "done", f"train job: {row}; seen {seen}"
    assert any(s == "running" and 0 < p < 1 for s, p, _ in seen), f"no progress seen while it trained: {seen}"

    folder = backend.data_dir / "models" / str(project_id)
    pointer = json.loads((folder / "current.json").read_text())
    decision = pointer["history"][0]
    metrics = decision["metrics"]
    assert metrics["train_frames"] + metrics["held_frames"] == FIT_TASKS * FIT_PAGES, decision
    assert metrics["iterations"] == FIT_ITERS and decision["base"].endswith("base-v001.pt"), decision
    after = ls.ml_backend(ml["id"])  # Label Studio re-reads /setup here (auto_update) and stores the version
    if decision["accepted"]:
        assert metrics["after"]["score"] > metrics["before"]["score"], metrics
        assert pointer["current"]["version"] == 1 and (folder / "scribblebox-ft-v001.pt").is_file(), pointer
        assert "serving scribblebox-ft-v001.pt" in row["message"], row
        assert setup_version(backend, project_id) == f"{base_version}-ft-v001"
        assert after["model_version"] == f"{base_version}-ft-v001", f"Label Studio shows {after['model_version']!r}"
    else:
        assert "current" not in pointer and not list(folder.glob("*.pt")), pointer
        assert metrics["after"]["score"] <= metrics["before"]["score"] and "not better" in metrics["reason"], metrics
        assert row["message"].startswith("kept base-v001.pt"), row
        assert setup_version(backend, project_id) == base_version
        assert after["model_version"] == base_version, f"Label Studio shows {after['model_version']!r}"
    assert setup_version(backend, project_id + 1000) == base_version, "another project keeps the base model"
