"""`fit`: the stable held-back split, fine-tuning that is served only when it measures better (accepted and rejected
cases), versioned atomic checkpoints, the per-project model registry, and the ``train`` job end to end against a
real HTTP stand-in for Label Studio (paginated /api/tasks, brush RLE, a real video file)."""
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; two spinning threads on 2 shared cores run 10-50x slower

from scribblebox.backend.jobs import GiveUp, JobQueue, JobWorker
from scribblebox.backend.label_studio import fit as fit_module
from scribblebox.backend.label_studio.brush import brush_result
from scribblebox.backend.label_studio.fit import (
    FitJob,
    TrainTrigger,
    newest_annotation,
    padded_box,
    train_payload,
)
from scribblebox.backend.label_studio.models_registry import ModelRegistry
from scribblebox.backend.label_studio.predict import Predictor
from scribblebox.backend.media import LabelStudioSession, MediaResolver
from scribblebox.backend.state import TrackStore
from scribblebox.models.networks.checkpoint import load_checkpoint, save_checkpoint
from scribblebox.models.networks.config import NetConfig
from scribblebox.models.networks.model import ScribbleBoxModel
from scribblebox.models.synthetic import write_video

from scribblebox.settings import (
    MaskSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
)
from scribblebox.training.finetune import (
    ApprovedSample,
    FitOptions,
    finetune,
    fit_step,
    split,
)
from stub_http import StubHandler

TINY = NetConfig(name="tiny", stem=8, widths=(8, 16, 24), blocks=(1, 1, 1), decoder=(16, 16, 8), gc_kernel=3,
                 embedding=8)
FAST = FitOptions(iters=20, batch=4, lr_max=0.01, holdout=0.25, device="cpu")
CONFIG = (Path(__file__).parents[1] / "config" / "label_studio" / "video_masks.xml").read_text()
LEGACY = "0123456789abcdef0123456789abcdef01234567"
W, H, N = 128, 96, 8


def scene(group: int, frames: int = N) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A red ellipse (BGR 30, 30, 220) moving over a dark green/blue texture: frames and bool masks."""
    rng = np.random.default_rng(group)
    texture = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    texture[..., 2] //= 4
    images, masks = [], []
    for f in range(frames):
        image, mask = texture.copy(), np.zeros((H, W), np.uint8)
        cv2.ellipse(mask, (40 + 4 * f + 8 * group, 48 + 2 * f), (18 + 2 * group, 12), 10.0 * f, 0, 360, 1, -1)
        image[mask > 0] = (30, 30, 220)
        images.append(image)
        masks.append(mask.astype(bool))
    return images, masks


def samples(groups: int = 3, frames: int = 6) -> list[ApprovedSample]:
    out = []
    for g in range(groups):
        for f, (image, mask) in enumerate(zip(*scene(g, frames))):
            out.append(ApprovedSample(image, padded_box(mask), mask, f"v{g}", f))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A random-init tiny network, as a checkpoint trained at 64x64 crops."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base-v001.pt", ScribbleBoxModel(TINY),
                           stage="interactive", iteration=0, metrics={}, train_args={"crop": 64, "margin": 0.2})


@pytest.fixture(scope="module")
def tuned(base, tmp_path_factory):
    """(report, saved checkpoint) of one fine-tune on the synthetic frames."""
    report = finetune(base, samples(), FAST)
    return report, report.save(tmp_path_factory.mktemp("tuned"))


def test_split_is_stable_deterministic_and_holds_back_at_least_one():
    few = samples(groups=2, frames=4)
    train, held = split(few, 0.25)
    assert held and train and len(train) + len(held) == len(few)
    assert [(s.group, s.index) for s in split(few, 0.25)[1]] == [(s.group, s.index) for s in held]
    _, more_held = split(few + samples(groups=3, frames=8)[len(few):], 0.25)
    assert {(s.group, s.index) for s in held} <= {(s.group, s.index) for s in more_held}  # stable as data grows
    tiny_train, tiny_held = split(few[:2], 0.01)
    assert len(tiny_held) == 1 and len(tiny_train) == 1  # none by the hash: still one held back
    all_train, all_held = split(few[:3], 0.99)
    assert len(all_held) == 1 and len(all_train) == 2  # all by the hash: only one held back
    with pytest.raises(ValueError, match="at least 2"):
        split(few[:1], 0.2)


def test_finetune_improves_held_back_iou_and_saves_versioned_checkpoints(tuned, base, tmp_path):
    report, path = tuned
    assert report.accepted and report.iterations == 20 and report.held_frames >= 1
    assert report.after["score"] > report.before["score"] + 0.1
    assert set(report.after) == {"box_iou", "prop_iou", "score"}  # held-back frames have near training frames
    assert path.name == "scribblebox-ft-v001.pt"
    second = report.save(path.parent)
    assert second.name == "scribblebox-ft-v002.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, second.name]  # no temporary file left
    model, payload = load_checkpoint(path)
    assert payload["stage"] == "finetune" and payload["metrics"]["accepted"] is True
    assert payload["train_args"]["crop"] == 64 and payload["train_args"]["base"] == str(base)
    assert all(p.requires_grad for p in model.parameters())  # the encoder is not left frozen


def test_a_project_on_the_classical_engine_is_measured_against_it(base):
    """Before: the engine the project serves (classical), not the base network; a weak network does not replace it."""
    from scribblebox.models.mask_engine import MaskEngine

    classical = MaskEngine.from_settings(MaskSettings(engine="classical"))
    report = finetune(base, samples(), FitOptions(iters=0, batch=2, holdout=0.25, device="cpu"), serving=classical)
    untouched = finetune(base, samples(), FitOptions(iters=0, batch=2, holdout=0.25, device="cpu"))
    assert report.before != untouched.before and report.before["box_iou"] > 0.5  # GrabCut finds the shapes
    assert set(report.before) == {"box_iou", "prop_iou", "score"}
    assert not report.accepted and "not better" in report.reason


def test_worse_model_is_rejected(tuned):
    _, path = tuned

    def inverted(model, inter, pairs):  # learns the background as the object: deterministically worse
        flipped = {**inter, "mask": 1 - inter["mask"]}
        return fit_step(model, flipped, None if pairs is None else {**pairs, "masks": 1 - pairs["masks"]})

    worse = finetune(path, samples(), FAST, step=inverted)
    assert not worse.accepted and worse.after["score"] < worse.before["score"]
    assert "not better" in worse.reason
    same = finetune(path, samples(), FitOptions(iters=0, device="cpu", holdout=0.25))
    assert not same.accepted and same.after == same.before  # a tie keeps the served model

    def diverging(model, inter, pairs):
        loss, metrics = fit_step(model, inter, pairs)
        return loss * float("nan"), metrics

    broken = finetune(path, samples(), FitOptions(iters=3, device="cpu"), step=diverging)
    assert not broken.accepted and "loss became nan" in broken.reason and broken.iterations == 0


def test_registry_serves_the_accepted_checkpoint_and_sees_other_processes(tmp_path, tuned):
    report, path = tuned
    registry, other = ModelRegistry(tmp_path), ModelRegistry(tmp_path)  # two processes on one data_dir
    base = MaskSettings(engine="classical", device="cpu")
    assert registry.mask_settings("1", base) == base and registry.model_version("1", "sb-1") == "sb-1"
    folder = registry.folder("1")
    folder.mkdir(parents=True)
    first = report.save(folder)
    other.accept("1", first, report.to_dict(), "base.pt")
    assert registry.model_version("1", "sb-1") == "sb-1-ft-v001"
    settings = registry.mask_settings("1", base)
    assert settings.engine == "learned" and settings.checkpoint == str(first) and settings.device == "cpu"
    second = report.save(folder)
    other.accept("1", second, report.to_dict(), str(first))
    other.reject("1", {"after": {"score": 0.0}}, str(second))
    assert registry.model_version("1", "sb-1") == "sb-1-ft-v002" and registry.current("1") == second
    assert [h["accepted"] for h in registry.read("1")["history"]] == [False, True, True]
    from scribblebox.models.mask_engine import MaskEngine

    assert type(MaskEngine.from_settings(registry.mask_settings("1", base))).__name__ == "LearnedMaskEngine"
    second.unlink()  # a missing file: back to the base model, never a broken engine
    assert registry.mask_settings("1", base) == base and registry.model_version("1", "sb-1") == "sb-1"
    with pytest.raises(ValueError, match="not a versioned checkpoint"):
        registry.accept("1", path, {}, "base.pt")
    assert registry.folder("../etc").name == "etc"


def test_train_payload_trigger_and_annotation_choice(tmp_path):
    assert train_payload({"action": "START_TRAINING", "project": {"id": 3, "label_config": "<View/>"}}) == (
        "3", {"label_config": "<View/>"})
    assert train_payload({"action": "ANNOTATION_CREATED", "task": {"id": 1, "project": 5}}) == ("5", {"label_config": None})
    trigger = TrainTrigger(ModelRegistry(tmp_path), every=3)
    assert [trigger.count("1") for _ in range(6)] == [False, False, True, False, False, True]
    assert not TrainTrigger(ModelRegistry(tmp_path), every=0).count("1")
    task = {"annotations": [{"id": 1, "updated_at": "2025-01-02", "result": ["new"]},
                            {"id": 2, "updated_at": "2025-01-03", "result": ["cancelled"], "was_cancelled": True},
                            {"id": 3, "updated_at": "2025-01-01", "result": ["old"]}],
            "drafts": [{"updated_at": "2025-01-09", "result": ["draft"]}]}
    assert newest_annotation(task) == ["new"] and newest_annotation({"drafts": task["drafts"]}) is None


# ---- the job against a Label Studio stand-in -----------------------------------------------------------------
def ls_task(task_id: int, group: int, items: list[int]) -> dict:
    _, masks = scene(group)
    result = [brush_result(masks[i], i, "Object", "mask", "frames", f"m{task_id}-{i}") for i in items]
    return {"id": task_id, "project": 1, "data": {"video": f"/data/upload/1/clip{group}.mp4", "fps": 25,
                                                  "frames": [f"/data/upload/1/f{i}.jpg" for i in range(N)]},
            "annotations": [{"id": 10 * task_id, "updated_at": "2025-01-02T00:00:00Z", "result": result},
                            {"id": 10 * task_id + 1, "updated_at": "2025-01-05T00:00:00Z", "was_cancelled": True,
                             "result": []}],
            "drafts": [], "predictions": []}


class LabelStudio(StubHandler):
    """Projects 1 (two tasks with masks, one without annotations) and 2 (two masks); pages of 2 tasks."""

    tasks: ClassVar[dict[str, list[dict]]] = {"1": [ls_task(1, 0, [0, 1, 2, 3, 4, 5, 6]), ls_task(2, 1, [1, 2, 3, 5, 6]),
                   {"id": 3, "project": 1, "data": {}, "annotations": []}],
             "2": [ls_task(4, 0, [2, 3])]}
    videos: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self):
        parts, query = urlsplit(self.path), parse_qs(urlsplit(self.path).query)
        self.seen.append(self.path)
        if self.headers.get("Authorization") != f"Token {LEGACY}":
            return self.reply(401, b"{}")
        if parts.path == "/api/tasks":
            tasks, page, size = self.tasks[query["project"][0]], int(query["page"][0]), int(query["page_size"][0])
            chunk = tasks[(page - 1) * size: page * size]
            if not chunk:
                return self.reply(404, b'{"detail": "Invalid page."}')
            return self.reply(200, json.dumps({"tasks": chunk, "total": len(tasks)}).encode())
        if parts.path.startswith("/api/projects/"):
            return self.reply(200, json.dumps({"id": 1, "label_config": CONFIG}).encode())
        if parts.path in self.videos:
            return self.reply(200, self.videos[parts.path], "video/mp4")
        return self.reply(404, b"{}")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ls")
    for group in (0, 1):
        path = write_video(folder / f"clip{group}.mp4", scene(group)[0], fps=25)
        LabelStudio.videos[f"/data/upload/1/clip{group}.mp4"] = path.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), LabelStudio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fit_job(tmp_path: Path, url: str, base: Path, **training) -> FitJob:
    settings = Settings(masks=MaskSettings(engine="learned", checkpoint=str(base) if base else None, device="cpu"),
                        server=ServerSettings(data_dir=str(tmp_path / "var")),
                        training=TrainingSettings(**{"fit_iters": 20, "fit_lr_max": 0.01, "fit_holdout": 0.25,
                                                     **training}))
    session = LabelStudioSession(url, LEGACY)
    predictor = Predictor(lambda: None, TrackStore(tmp_path / "state.sqlite3"),
                          MediaResolver(tmp_path / "media", 10 * 2**20, session=session), "sb-test")
    return FitJob(predictor, settings)


def test_train_job_end_to_end_accepts_then_keeps_the_better_model(tmp_path, label_studio, base, monkeypatch):
    monkeypatch.setattr(fit_module, "PAGE_SIZE", 2)
    job = fit_job(tmp_path, label_studio, base)
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    worker = JobWorker(queue, job)
    queue.enqueue("1", "1", {"label_config": None}, kind="train")  # the config comes from /api/projects/1
    assert worker.run_once()
    row = queue.get("1", "1", kind="train")
    assert row["status"] == "done" and row["progress"] == 1.0 and "serving scribblebox-ft-v001.pt" in row["message"]
    assert any(p.startswith("/api/tasks?project=1&page=2&page_size=2") for p in LabelStudio.seen)
    registry = ModelRegistry(tmp_path / "var")
    first = tmp_path / "var" / "models" / "1" / "scribblebox-ft-v001.pt"
    assert registry.current("1") == first and registry.model_version("1", "sb") == "sb-ft-v001"
    pointer = registry.read("1")
    assert pointer["current"]["metrics"]["train_frames"] + pointer["current"]["metrics"]["held_frames"] == 12
    # no iterations: the new model measures the same as the served one, which stays
    report = fit_job(tmp_path, label_studio, base, fit_iters=0).run("1", {"label_config": CONFIG}, lambda f, m: None)
    assert not report.accepted and registry.current("1") == first
    assert sorted(p.name for p in first.parent.glob("*.pt")) == [first.name]
    assert [h["accepted"] for h in registry.read("1")["history"]] == [False, True]
    assert registry.read("1")["history"][0]["base"] == str(first)  # the second run started from the served model


def test_too_few_masks_gives_up_and_changes_nothing(tmp_path, label_studio, base, monkeypatch):
    job = fit_job(tmp_path, label_studio, base)
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    queue.enqueue("2", "2", {"label_config": CONFIG}, kind="train")
    assert JobWorker(queue, job).run_once()
    row = queue.get("2", "2", kind="train")
    assert row["status"] == "failed" and "has 2 approved brush mask(s)" in row["last_error"]
    assert "at least 4" in row["last_error"] and not (tmp_path / "var" / "models" / "2").exists()
    monkeypatch.setattr(fit_module, "checkpoint_path", lambda masks: None)  # an install without the shipped one
    with pytest.raises(GiveUp, match="no mask checkpoint"):
        fit_job(tmp_path, label_studio, None).run("1", {"label_config": CONFIG}, lambda f, m: None)


def test_start_training_webhook_queues_one_train_job_per_project(tmp_path):
    from scribblebox.backend.server import create_app

    settings = Settings(server=ServerSettings(data_dir=str(tmp_path)))
    app = create_app(settings, env={})
    backend = app.extensions["scribblebox"]
    backend.worker.start = lambda: None  # keep the job queued: this test checks the webhook, not the run
    client = app.test_client()
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3, "label_config": "<View/>"}})
    assert answer.status_code == 200 and answer.get_json()["job"] == "train" and answer.get_json()["project"] == "3"
    assert backend.jobs.get("3", "3", kind="train")["status"] == "pending"
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert backend.jobs.get("3", "3", kind="train")["generation"] == 2, "one job per project, replaced"
    assert client.post("/webhook", json={"action": "START_TRAINING"}).get_json()["job"] is None
    assert client.post("/setup", json={"project": "3.1700000000"}).get_json()["model_version"].startswith("scribblebox-")


def test_a_fine_tuned_project_reports_its_version_everywhere(tmp_path, tuned, base):
    """/setup, /versions and the prediction items agree: Label Studio skips tasks by the version /setup reports."""
    from scribblebox.backend.label_studio.models_registry import CHECKPOINT_NAME
    from scribblebox.backend.server import create_app

    app = create_app(Settings(server=ServerSettings(data_dir=str(tmp_path))), env={})
    backend = app.extensions["scribblebox"]
    report, _ = tuned
    path = report.save(backend.registry.folder("3"), CHECKPOINT_NAME)
    backend.registry.accept("3", path, report.to_dict(), str(base))
    client = app.test_client()
    tuned_version = client.post("/setup", json={"project": "3.1700000000"}).get_json()["model_version"]
    assert tuned_version.endswith("-ft-v001") and tuned_version != backend.predictor.model_version
    assert client.get("/versions", json={"project": "3.1700000000"}).get_json()["versions"] == [
        tuned_version, backend.predictor.model_version]
    assert client.post("/setup", json={"project": "4.1"}).get_json()["model_version"] == backend.predictor.model_version
    empty = backend.predictor._complete("3", {"id": 1, "data": {}}, [], None)
    assert empty["model_version"] == tuned_version
