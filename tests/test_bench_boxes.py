"""Box-track benchmark: DAVIS-folder reading, the simulated annotator, the baselines and the command."""
from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from scribblebox.evaluation import boxes
from scribblebox.evaluation.boxes import CsrtLoop, Interp, bench_command, simulate, worst_frame
from scribblebox.evaluation.davis import list_sequences, load_sequence
from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.track import Keyframe, TrackResult, render_keyframes
from scribblebox.settings import load_settings
from repo_scripts import DAVIS, needs_davis

W, H = 96, 64


def write_sequence(root: Path, name: str, boxes_xywh: list[tuple[int, int, int, int] | None]) -> None:
    """Textured background with a textured object; masks are the object's rectangle (None: empty mask)."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    pattern = rng.integers(140, 256, (40, 40, 3), dtype=np.uint8)
    (root / name / "frames").mkdir(parents=True)
    (root / name / "masks").mkdir()
    for i, box in enumerate(boxes_xywh):
        frame = background.copy()
        mask = np.zeros((H, W), np.uint8)
        if box is not None:
            x, y, w, h = box
            frame[y:y + h, x:x + w] = pattern[:h, :w]
            mask[y:y + h, x:x + w] = 255
        cv2.imwrite(str(root / name / "frames" / f"{i:05d}.jpg"), frame)
        cv2.imwrite(str(root / name / "masks" / f"{i:05d}.png"), mask)


LINEAR = [(4 + 6 * i, 20, 16, 12) for i in range(10)]  # 6 px/frame right: the last frame is disjoint from the first
ZIGZAG = [(4 + 5 * min(i, 8 - i if i <= 8 else i - 8), 20 + 3 * (i % 3), 16, 12) for i in range(12)]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_sequence(tmp_path, "linear", LINEAR)
    write_sequence(tmp_path, "zigzag", [None] + ZIGZAG[1:])
    return tmp_path


def test_davis_folder_gives_tight_boxes_nan_for_empty_masks_and_cuts(root: Path) -> None:
    assert list_sequences(root) == ["linear", "zigzag"]
    seq = load_sequence(root, "linear")
    assert seq.video.num_frames == 10 and (seq.video.width, seq.video.height) == (W, H)
    np.testing.assert_array_equal(seq.gt, np.array(LINEAR, float))
    assert seq.video.frame(3).shape == (H, W, 3)
    zig = load_sequence(root, "zigzag", max_frames=5)
    assert zig.video.num_frames == 5 and zig.gt.shape == (5, 4)
    assert np.isnan(zig.gt[0]).all() and not np.isnan(zig.gt[1:]).any()
    assert [i for i, _ in zig.video.frames(4, -1)] == [4, 3, 2, 1, 0]
    with pytest.raises(IndexError):
        zig.video.frame(5)
    with pytest.raises(FileNotFoundError):
        load_sequence(root, "nope")


def test_interp_on_linear_motion_needs_first_and_last_frame(root: Path) -> None:
    seq = load_sequence(root, "linear")
    ep = simulate(Interp(), seq.video, seq.gt)
    assert ep.clicks == 2 and ep.placed_frames == [0, 9]
    assert ep.iou_first < 0.7 and ep.min_iou_final == pytest.approx(1.0)
    assert ep.keyframes == 2 and not ep.capped


@pytest.mark.parametrize("method", [Interp, CsrtLoop])
def test_annotator_stops_when_every_visible_frame_is_good(root: Path, method) -> None:
    seq = load_sequence(root, "zigzag")
    ep = simulate(method(), seq.video, seq.gt)
    assert not ep.capped and ep.min_iou_final >= 0.7
    assert ep.placed_frames[0] == 1  # the first frame where the object is visible
    assert 1 <= ep.clicks <= 11 and ep.frames_processed > 0
    if method is CsrtLoop:
        assert ep.keyframes == 11  # a shape on every frame from the first click on


def test_csrt_loop_retracks_only_from_a_new_box_to_the_next(root: Path) -> None:
    seq = load_sequence(root, "linear")
    loop = CsrtLoop()
    loop.start(seq.video)
    first = loop.show([Keyframe.of(0, seq.gt[0])])
    assert loop.frames_processed == 10 and not np.isnan(first).any()
    second = loop.show([Keyframe.of(0, seq.gt[0]), Keyframe.of(5, seq.gt[5] + [2, 0, 0, 0])])
    assert loop.frames_processed == 15  # frames 5..9 only; the run from frame 0 is cut, not redone
    np.testing.assert_array_equal(second[:5], first[:5])
    np.testing.assert_array_equal(second[5], seq.gt[5] + [2, 0, 0, 0])


def test_worst_frame_ignores_frames_without_gt_and_counts_missing_shapes_as_zero() -> None:
    gt = np.array([[0, 0, 10, 10], [np.nan] * 4, [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    shown = np.array([[0, 0, 10, 10], [50, 50, 5, 5], [5, 0, 10, 10], [np.nan] * 4, [np.nan] * 4], float)
    assert worst_frame(shown, gt) == (3, 0.0)  # frame 1 is wrong but has no GT; 3 and 4 tie: the earliest
    shown[3:] = gt[3:]
    f, value = worst_frame(shown, gt)
    assert f == 2 and value == pytest.approx(50 / 150)
    shown[2:] = [[20, 0, 10, 10], [40, 0, 10, 10], [30, 0, 10, 10]]
    assert worst_frame(shown, gt) == (3, 0.0)  # three disjoint boxes: the farthest off is drawn first


def test_clicks_follow_the_worst_frame_on_a_hand_made_track() -> None:
    # 100 px wide, right 40 px over 4 frames, then back: IoU of a shift d is (100 - d) / (100 + d).
    x = [0, 10, 20, 30, 40, 30, 20, 10, 0, 0]
    gt = np.array([[v, 0, 100, 10] for v in x], float)
    ep = simulate(Interp(), SimpleNamespace(num_frames=len(x)), gt)
    # Held first box: worst at the turn (4); then held from 4: frames 8 and 9 tie, the earliest is drawn; done.
    assert ep.placed_frames == [0, 4, 8] and ep.clicks == 3 and ep.keyframes == 3
    assert ep.min_iou_final == pytest.approx(1.0)
    assert ep.iou_first == pytest.approx(np.mean([(100 - d) / (100 + d) for d in x]))


class OnlyPlaced:
    """A method that draws only the placed boxes: every visible frame needs a click."""

    name = "only-placed"

    def start(self, video) -> None:
        self.n, self.frames_processed = video.num_frames, 0

    def show(self, placed: list[Keyframe]) -> np.ndarray:
        out = np.full((self.n, 4), np.nan)
        for k in placed:
            out[k.frame] = k.box
        return out

    def keyframe_count(self) -> int:
        return 0


def test_click_cap_and_a_method_that_ignores_the_annotator() -> None:
    gt = np.array([[np.nan] * 4] + [[i, 0, 10, 10] for i in range(6)], float)
    video = SimpleNamespace(num_frames=7)
    full = simulate(OnlyPlaced(), video, gt)
    assert full.clicks == 6 and full.placed_frames == [1, 2, 3, 4, 5, 6] and not full.capped
    capped = simulate(OnlyPlaced(), video, gt, max_clicks=3)
    assert capped.capped and capped.clicks == 3 and capped.min_iou_final == 0.0

    class Blind(OnlyPlaced):
        def show(self, placed):
            return np.full((self.n, 4), np.nan)

    stuck = simulate(Blind(), video, gt)
    assert stuck.capped and stuck.clicks == 1  # the worst frame is already drawn: stop instead of looping


def test_bench_command_runs_all_methods_and_passes_previous_to_the_engine(root: Path, tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    calls = []

    def stand_in(self, video, anchors, previous=None):
        calls.append((len(anchors), previous))
        n = video.num_frames
        return TrackResult(n, render_keyframes(list(anchors), n), np.ones(n), list(anchors), list(anchors))

    monkeypatch.setattr(CurveVOT, "track", stand_in)
    out = tmp_path / "bench.json"
    args = Namespace(root=str(root), sequences="linear,zigzag", max_frames=0, methods="interp, csrt-loop,curvevot",
                     output=str(out))
    assert bench_command(load_settings(env={}), args) == 0
    doc = json.loads(out.read_text())
    assert [s["name"] for s in doc["sequences"]] == ["linear", "zigzag"]
    linear = doc["sequences"][0]["methods"]
    assert linear["interp"]["clicks"] == linear["curvevot"]["clicks"] == 2  # the stand-in shows the anchors only
    assert linear["csrt-loop"]["keyframes"] == 10
    assert doc["overall"]["interp"]["sequences"] == 2
    assert calls[0] == (1, None) and calls[1][1] is not None and calls[1][0] == 2
    table = capsys.readouterr().out
    assert "linear" in table and "zigzag" in table and "overall" in table and "curvevot" in table


def test_a_method_whose_engine_is_missing_is_skipped(root: Path, monkeypatch, capsys) -> None:
    def missing(self, video, anchors, previous=None):
        raise NotImplementedError

    monkeypatch.setattr(CurveVOT, "track", missing)
    args = Namespace(root=str(root), sequences=None, max_frames=4, methods="interp,curvevot", output=None)
    assert bench_command(load_settings(env={}), args) == 0
    assert "n/a" in capsys.readouterr().out
    with pytest.raises(ValueError, match="choose from"):
        boxes.parse_methods("interp,kcf")


@needs_davis
def test_interp_on_a_real_davis_sequence(tmp_path: Path) -> None:
    name = "bus" if (DAVIS / "bus").is_dir() else list_sequences(DAVIS)[0]
    out = tmp_path / "real.json"
    args = Namespace(root=str(DAVIS), sequences=name, max_frames=20, methods="interp", output=str(out))
    assert bench_command(load_settings(env={}), args) == 0
    seq = json.loads(out.read_text())["sequences"][0]
    assert seq["frames"] == 20
    ep = seq["methods"]["interp"]
    assert ep["clicks"] >= 1 and ep["min_iou_final"] >= 0.7 and ep["keyframes"] == ep["clicks"]
