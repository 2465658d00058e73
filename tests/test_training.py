"""Training: the CLR schedule, the clip generators, a tiny run that lowers the loss, the stage runs end to end
(resume, init, versioned files) and checkpoints (round trip, strict loading). Data: a tiny DAVIS-format folder
made here (red ellipses moving over textured backgrounds), so nothing depends on ../shared/data."""
import argparse
import math

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; two spinning threads on 2 shared cores run 10-50x slower

from scribblebox.models.networks.checkpoint import (
    latest_version,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    versioned_path,
)
from scribblebox.models.networks.config import SIZES
from scribblebox.models.networks.model import ScribbleBoxModel

from scribblebox.training.clips import load_bank, synthetic_pair, video_clip
from scribblebox.training.interactions import interaction_sample
from scribblebox.training.options import TrainOptions, add_train_arguments
from scribblebox.training.schedule import clr_triangular2
from scribblebox.training.steps import correspondence, synthetic_step, to_device
from scribblebox.training.train import train, train_command

SEQUENCES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """3 sequences x 8 frames of 96x128: a red ellipse (BGR 30, 30, 220) moving over a green/blue texture."""
    root = tmp_path_factory.mktemp("davis")
    rng = np.random.default_rng(0)
    for s, name in enumerate(SEQUENCES):
        (root / name / "frames").mkdir(parents=True)
        (root / name / "masks").mkdir()
        texture = rng.integers(0, 120, (96, 128, 3), dtype=np.uint8)
        texture[..., 2] //= 4  # little red in the background
        for f in range(8):
            frame, mask = texture.copy(), np.zeros((96, 128), np.uint8)
            centre = (40 + 4 * f + 8 * s, 48 + 2 * f)
            cv2.ellipse(mask, centre, (18 + 2 * s, 12), 10.0 * f, 0, 360, 255, -1)
            frame[mask > 0] = (30, 30, 220)
            cv2.imwrite(str(root / name / "frames" / f"{f:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / name / "masks" / f"{f:05d}.png"), mask)
    return root


@pytest.fixture(scope="module")
def bank(davis):
    return load_bank(davis, list(SEQUENCES), max_side=128, workers=1)


def test_clr_triangular2_values():
    total = 800  # 4 cycles of 200 iterations: peaks at 100, 300, 500, 700
    assert clr_triangular2(0, total) == pytest.approx(1e-5)
    assert clr_triangular2(100, total) == pytest.approx(1e-3)
    assert clr_triangular2(50, total) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert clr_triangular2(200, total) == pytest.approx(1e-5)
    assert clr_triangular2(300, total) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # amplitude halves per cycle
    assert clr_triangular2(500, total) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 4)
    assert clr_triangular2(700, total) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 8)
    assert clr_triangular2(799, total) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 8 / 100)


def test_clr_matches_torchs_cyclic_lr_triangular2():
    total = 120
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-5, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-5, 1e-3, step_size_up=15, mode="triangular2",
                                              cycle_momentum=False)
    for it in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(clr_triangular2(it, total), rel=1e-6, abs=1e-12)
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="total iterations"):
        clr_triangular2(0, 0)


def test_synthetic_pair_shapes_and_the_mask_covers_the_pasted_object(bank):
    rng = np.random.default_rng(3)
    for _ in range(6):
        sample = synthetic_pair(bank, rng, 64, compose=1.0, distractor=0.0)
        assert {k: v.shape for k, v in sample.items()} == {
            "ref_image": (64, 64, 3), "ref_mask": (64, 64), "image": (64, 64, 3), "mask": (64, 64), "previous": (64, 64)}
        assert sample["image"].dtype == np.uint8 and sample["mask"].dtype == np.float32
        for role in ("ref_", ""):
            image, mask = sample[role + "image"].astype(int), sample[role + "mask"]
            red = (image[..., 2] > 150) & (image[..., 1] < 100)
            assert red[mask > 0.9].mean() > 0.95  # under the mask: the pasted object
            # elsewhere: another sequence's frame, whose own (red) object may show but never dominates
            assert red[mask < 0.1].mean() < 0.3
            assert 0.05 < (mask > 0.5).mean() < 0.9  # the object fills a good part of its box crop


def test_synthetic_pair_occluder_removes_hidden_pixels_from_the_mask(bank):
    rng = np.random.default_rng(5)
    covered = []
    for _ in range(10):
        sample = synthetic_pair(bank, rng, 64, compose=0.0, distractor=1.0)
        red = (sample["image"][..., 2] > 150) & (sample["image"][..., 1] < 100)
        assert (sample["mask"] > 0.5).sum() <= red.sum() + 5  # the mask never claims more than the red pixels
        covered.append((red & (sample["mask"] < 0.1)).sum())
    assert max(covered) > 0  # some occluders (also red ellipses) landed outside the object's mask


def test_video_clip_three_ordered_frames(bank):
    sample = video_clip(bank, np.random.default_rng(1), 64, max_gap=1)
    assert sample["images"].shape == (3, 64, 64, 3) and sample["masks"].shape == (3, 64, 64)
    assert sample["previous"].shape == (64, 64) and sample["theta"].shape == (1, 2, 3)
    # the previous mask (frame 0 in frame 1's crop) overlaps frame 1's mask: the objects move a few pixels
    prev, cur = sample["previous"] > 0.5, sample["masks"][1] > 0.5
    assert (prev & cur).sum() / (prev | cur).sum() > 0.4


def test_interaction_sample_strokes_and_correspondence(bank):
    rng = np.random.default_rng(2)
    same = 0
    for _ in range(12):
        s = interaction_sample(bank, rng, 64)
        assert s["guide"].shape == (2, 64, 64) and s["correspondence"].shape == (3, 3)
        assert np.all(s["mask"][s["positive"] > 0] > 0.5)  # positive strokes on the object
        assert np.all(s["mask"][s["negative"] > 0] < 0.5)  # negative strokes off it
        if s["same"]:
            same += 1  # the target's mask moved by the correspondence lands on the reference's mask
            moved = cv2.warpAffine(s["mask"], s["correspondence"][:2], (64, 64)) > 0.5
            ref = s["ref_mask"] > 0.5
            assert (moved & ref).sum() / (moved | ref).sum() > 0.8
    assert same > 0


def test_correspondence_positives_follow_the_matrix():
    eye = torch.eye(3)[None]
    pos, neg = correspondence(eye, torch.ones(1), (4, 4))
    assert pos[0].diagonal().all() and not (pos[0] & neg[0]).any()
    assert pos.shape == (1, 16, 16)
    shift = torch.tensor([[[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]])  # one cell to the right
    pos, _ = correspondence(shift, torch.ones(1), (4, 4))
    assert pos[0, 0, 1] and not pos[0, 0, 3]
    pos, _ = correspondence(eye, torch.zeros(1), (4, 4))
    assert not pos.any()


def test_a_tiny_training_run_lowers_the_loss(bank):
    torch.manual_seed(0)
    model = ScribbleBoxModel(SIZES["small"]).train()
    rng = np.random.default_rng(0)
    samples = [synthetic_pair(bank, rng, 64) for _ in range(4)]
    batch = to_device(torch.utils.data.default_collate(samples), torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    losses = []
    for it in range(30):
        for group in optimizer.param_groups:
            group["lr"] = clr_triangular2(it, 30, cycles=1, high=1e-2)
        loss, _ = synthetic_step(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def options(davis, out, **kw):
    base = {"stage": "synthetic", "data": str(davis), "out": str(out), "holdout": ("gamma",), "crop": 32, "iters": 4,
            "batch": 4, "log_every": 2, "save_every": 2, "val_samples": 4, "max_side": 128, "device": "cpu"}
    return TrainOptions(**{**base, **kw})


def test_three_stages_resume_and_versioned_checkpoints(davis, tmp_path):
    first = train(options(davis, tmp_path))
    assert first.name == "scribblebox-small-synthetic-v001.pt"
    payload = read_checkpoint(first)
    assert payload["iteration"] == 4 and payload["optimizer"] is None
    assert set(payload["metrics"]["val"]) == {"loss", "iou"} and payload["train_args"]["holdout"] == ["gamma"]
    assert payload["train_args"]["train_sequences"] == ["alpha", "beta"]
    state = tmp_path / "synthetic-state.pt"
    resumed = train(options(davis, tmp_path, iters=6, resume=str(state)))
    assert resumed.name == "scribblebox-small-synthetic-v002.pt" and read_checkpoint(resumed)["iteration"] == 6
    video = train(options(davis, tmp_path, stage="video", init=str(resumed)))
    inter = train(options(davis, tmp_path, stage="interactive", init=str(video)))
    model, payload = load_checkpoint(inter)
    assert set(payload["metrics"]["val"]) == {"loss", "iou", "iou_prop", "triplet"}
    # stage 3 froze the encoder: its weights are stage 2's
    before, _ = load_checkpoint(video)
    for (k, a), b in zip(model.encoder.state_dict().items(), before.encoder.state_dict().values()):
        assert torch.equal(a, b), k
    assert inter.stat().st_size < 5 * 2**20
    with pytest.raises(ValueError, match="use --init"):
        train(options(davis, tmp_path, stage="video", resume=str(state)))


def test_bad_options_say_what_to_do(davis, tmp_path):
    with pytest.raises(ValueError, match="not sequences"):
        train(options(davis, tmp_path, holdout=("nope",)))
    with pytest.raises(ValueError, match="multiple of 16"):
        options(davis, tmp_path, crop=40)
    with pytest.raises(ValueError, match="not both"):
        options(davis, tmp_path, resume="a", init="b")


def test_train_command_parses_the_cli_arguments(davis, tmp_path, capsys):
    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--stage", "synthetic", "--data", str(davis), "--holdout", "gamma", "--crop", "32",
                              "--iters", "2", "--batch", "4", "--out", str(tmp_path), "--device", "cpu",
                              "--val-samples", "0", "--max-side", "128"])
    assert train_command(None, args) == 0
    assert capsys.readouterr().out.strip().endswith("scribblebox-small-synthetic-v001.pt")


def test_checkpoint_round_trip_atomic_and_strict(tmp_path):
    torch.manual_seed(0)
    model = ScribbleBoxModel(SIZES["small"])
    path = versioned_path(tmp_path, "m")
    assert path.name == "m-v001.pt"
    save_checkpoint(path, model, stage="video", iteration=7, metrics={"val": {"iou": 0.5}}, train_args={"crop": 64})
    assert versioned_path(tmp_path, "m").name == "m-v002.pt" and latest_version(tmp_path, "m") == path
    assert [p.name for p in tmp_path.iterdir()] == ["m-v001.pt"]  # no temporary file left behind
    loaded, payload = load_checkpoint(path)
    assert payload["metrics"] == {"val": {"iou": 0.5}} and payload["stage"] == "video" and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="differs from the expected"):
        load_checkpoint(path, SIZES["paper"])
    broken = torch.load(path, weights_only=True)
    broken["state_dict"].pop(next(iter(broken["state_dict"])))
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(tmp_path / "broken.pt")
    half = save_checkpoint(tmp_path / "half.pt", model, stage="video", iteration=7, metrics={}, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    small, _ = load_checkpoint(half)
    assert torch.allclose(small.encoder.stem[0][0].weight, model.encoder.stem[0][0].weight, atol=1e-3)
