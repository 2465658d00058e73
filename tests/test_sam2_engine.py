"""The optional SAM2 mask engine, wired for real but with random weights (`sam2_checkpoint: random`, 256-px input):
contract, prompts, config selection and refusals; mask quality cannot be judged here (no weights may be downloaded).
Skips without the sam2 package (scripts/install-sam2.sh)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sam2")

from scribblebox.models.mask_engine import MaskEngine  # noqa: E402
from scribblebox.models.masks import MaskResult, Scribble  # noqa: E402
from scribblebox.models.sam2_engine import RANDOM_IMAGE_SIZE, Sam2MaskEngine, stroke_points  # noqa: E402
from scribblebox.models.segmentation import satisfies  # noqa: E402
from scribblebox.models.synthetic import moving_box_scene  # noqa: E402
from scribblebox.models.video import ArrayVideo  # noqa: E402
from scribblebox.settings import MaskSettings, load_settings  # noqa: E402

W, H, N = 96, 64, 8
TEST_ONLY = MaskSettings(engine="sam2", sam2_checkpoint="random", device="cpu")


class SweepVideo(ArrayVideo):
    """Counts random-access reads made by the engine (sequential sweeps go through frames())."""

    def __init__(self, frames: np.ndarray) -> None:
        super().__init__(frames)
        self.random_reads = 0

    def frame(self, index: int) -> np.ndarray:
        self.random_reads += 1
        return super().frame(index)

    def frames(self, start: int, stop: int):
        for i in self._check_range(start, stop):
            yield i, super().frame(i)


@pytest.fixture(scope="module")
def scene():
    return moving_box_scene(N, (W, H), start=(20, 15, 30, 24), velocity=(3, 1), seed=1)


@pytest.fixture(scope="module")
def engine() -> Sam2MaskEngine:
    return MaskEngine.from_settings(TEST_ONLY)


@pytest.fixture()
def video(scene) -> SweepVideo:
    return SweepVideo(np.stack(list(scene.frames())))


def gapped(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[[3, N - 1]] = np.nan  # the object is absent on frame 3 and on the last frame
    return out


def test_from_settings_builds_the_sam2_engine_once(engine) -> None:
    assert isinstance(engine, Sam2MaskEngine)
    assert engine.predictor.image_size == RANDOM_IMAGE_SIZE
    assert MaskEngine.from_settings(TEST_ONLY).predictor is engine.predictor  # weights load once per process


def test_strokes_give_a_mask_on_every_boxed_frame_only(engine, scene, video) -> None:
    boxes = gapped(scene.boxes)
    strokes = [Scribble(5, np.array([[40.0, 30.0], [44, 33], [48, 35]]), True),
               Scribble(5, np.array([[4.0, 4.0]]), False)]
    seen: list[float] = []
    result = engine.run(video, boxes, strokes, progress=lambda fraction, message: seen.append(fraction))
    assert isinstance(result, MaskResult) and result.seconds > 0
    assert sorted(result.masks) == [f for f in range(N) if f not in (3, N - 1)]
    assert all(m.dtype == bool and m.shape == (H, W) for m in result.masks.values())
    assert sorted(result.approved) == [5] and result.approved[5] is result.masks[5]
    assert satisfies(result.masks[5], strokes)  # strokes hold on their frame, whatever the weights
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 2
    assert video.random_reads <= 4, "sweeps must read frames sequentially, not seek each one"


def test_approved_masks_come_back_unchanged(engine, scene, video) -> None:
    mine = np.zeros((H, W), dtype=bool)
    mine[20:40, 30:60] = True
    result = engine.run(video, scene.boxes, [], approved={2: mine})
    assert np.array_equal(result.masks[2], mine) and np.array_equal(result.approved[2], mine)
    assert sorted(result.masks) == list(range(N))


def test_the_box_track_alone_is_enough(engine, scene, video) -> None:
    result = engine.run(video, gapped(scene.boxes), [])
    assert result.approved == {} and sorted(result.masks) == [f for f in range(N) if f not in (3, N - 1)]
    again = engine.run(video, gapped(scene.boxes), [])
    assert all(np.array_equal(result.masks[f], again.masks[f]) for f in result.masks)  # deterministic


def test_input_is_checked_like_the_other_engines(engine, scene, video) -> None:
    with pytest.raises(ValueError, match="no box"):
        engine.run(video, gapped(scene.boxes), [Scribble(3, np.array([[10.0, 10.0]]), True)])
    with pytest.raises(ValueError, match="approved mask on frame 1"):
        engine.run(video, scene.boxes, [], approved={1: np.zeros((H + 1, W), dtype=bool)})
    with pytest.raises(ValueError, match="boxes must be"):
        engine.run(video, scene.boxes[:-1], [])
    empty = engine.run(video, np.full((N, 4), np.nan), [])
    assert empty.masks == {} and empty.approved == {}


def test_strokes_become_at_most_a_few_labelled_points() -> None:
    line = np.stack([np.arange(50.0), np.arange(50.0)], axis=1)
    points, labels = stroke_points([Scribble(0, line, True), Scribble(0, np.array([[1.0, 2.0]]), False)])
    assert points.shape == (9, 2) and labels.tolist() == [1] * 8 + [0]
    assert points[0].tolist() == [0, 0] and points[7].tolist() == [49, 49] and points[8].tolist() == [1, 2]


@pytest.mark.parametrize("checkpoint, message", [(None, "needs masks.sam2_checkpoint"),
                                                 ("/nonexistent/sam2.1_hiera_tiny.pt", "is not a file")])
def test_a_missing_checkpoint_is_refused_clearly(checkpoint, message) -> None:
    with pytest.raises(ValueError, match=message):
        MaskEngine.from_settings(MaskSettings(engine="sam2", sam2_checkpoint=checkpoint))


def test_a_file_that_is_not_a_sam2_checkpoint_is_refused_clearly(tmp_path) -> None:
    bogus = tmp_path / "sam2.1_hiera_tiny.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="does not load into SAM2 config"):
        MaskEngine.from_settings(MaskSettings(engine="sam2", sam2_checkpoint=str(bogus), device="cpu"))


def test_a_user_checkpoint_file_loads_and_must_match_its_config(engine, tmp_path) -> None:
    import torch

    path = tmp_path / "sam2.1_hiera_tiny.pt"  # a stand-in for the real file: the tiny model's keys, random values
    torch.save({"model": {k: v.half() if v.is_floating_point() else v
                          for k, v in engine.predictor.state_dict().items()}}, path)
    built = MaskEngine.from_settings(MaskSettings(engine="sam2", sam2_checkpoint=str(path), device="cpu"))
    assert built.predictor is not engine.predictor and built.predictor.image_size == 1024  # the config's own size
    with pytest.raises(ValueError, match="does not load into SAM2 config configs/sam2.1/sam2.1_hiera_s.yaml"):
        MaskEngine.from_settings(MaskSettings(engine="sam2", sam2_checkpoint=str(path), device="cpu",
                                              sam2_config="configs/sam2.1/sam2.1_hiera_s.yaml"))


def test_an_unknown_config_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="sam2.1_hiera_t.yaml"):
        MaskEngine.from_settings(MaskSettings(engine="sam2", sam2_checkpoint="random", sam2_config="nope.yaml"))


def test_missing_sam2_package_says_how_to_install(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sam2", None)
    with pytest.raises(RuntimeError, match="scripts/install-sam2.sh"):
        MaskEngine.from_settings(TEST_ONLY)


def test_selected_by_config_file_and_environment(tmp_path) -> None:
    defaults = load_settings(env={}).masks
    assert defaults.engine == "classical" and defaults.sam2_checkpoint is None
    assert defaults.sam2_config == MaskSettings().sam2_config == "configs/sam2.1/sam2.1_hiera_t.yaml"
    config = tmp_path / "config.yaml"
    config.write_text("masks:\n  engine: sam2\n  sam2_checkpoint: /weights/a.pt\n")
    from_file = load_settings(config, env={}).masks
    assert (from_file.engine, from_file.sam2_checkpoint) == ("sam2", "/weights/a.pt")
    env = {"SCRIBBLEBOX_MASK_ENGINE": "sam2", "SCRIBBLEBOX_SAM2_CHECKPOINT": "/weights/sam2.1_hiera_small.pt",
           "SCRIBBLEBOX_SAM2_CONFIG": "configs/sam2.1/sam2.1_hiera_s.yaml"}
    masks = load_settings(config, env=env).masks
    assert (masks.engine, masks.sam2_checkpoint, masks.sam2_config) == \
        ("sam2", "/weights/sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml")
