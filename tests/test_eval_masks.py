"""`scribblebox eval`: the box stage + scribble rounds on a tiny DAVIS-format folder, with a stand-in mask engine."""
from __future__ import annotations

import json
import sys
import types
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pytest

from scribblebox.evaluation import masks as ev
from scribblebox.evaluation.boxes import CurveVotMethod, Interp
from scribblebox.evaluation.masks import Round, SequenceEval, eval_command, mask_stage, run_eval
from scribblebox.models.masks import MaskResult, Scribble
from scribblebox.settings import load_settings
from repo_scripts import DAVIS, needs_davis

W, H, R = 96, 72, 14
CENTRES = [(24 + 5 * i, 34) for i in range(8)]  # a disk moving 5 px/frame to the right


def disk_mask(cx: int, cy: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= R * R


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    background = rng.integers(0, 100, (H, W, 3), dtype=np.uint8)
    texture = rng.integers(150, 256, (H, W, 3), dtype=np.uint8)
    for name in ("disk", "empty"):
        (tmp_path / name / "frames").mkdir(parents=True)
        (tmp_path / name / "masks").mkdir()
    for i, (cx, cy) in enumerate(CENTRES):
        mask = disk_mask(cx, cy)
        frame = np.where(mask[..., None], texture, background)
        cv2.imwrite(str(tmp_path / "disk" / "frames" / f"{i:05d}.jpg"), frame)
        cv2.imwrite(str(tmp_path / "disk" / "masks" / f"{i:05d}.png"), mask.astype(np.uint8) * 255)
        if i < 3:
            cv2.imwrite(str(tmp_path / "empty" / "frames" / f"{i:05d}.jpg"), background)
            cv2.imwrite(str(tmp_path / "empty" / "masks" / f"{i:05d}.png"), np.zeros((H, W), np.uint8))
    return tmp_path


class BoxFill:
    """Stand-in engine: the box filled, then each stroke painted (positive) or erased (negative) on its own frame."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, list[Scribble], MaskResult | None]] = []

    @classmethod
    def from_settings(cls, masks) -> "BoxFill":
        return cls()

    def run(self, video, boxes, scribbles, previous=None) -> MaskResult:
        self.calls.append((boxes.copy(), list(scribbles), previous))
        out = {}
        for f, box in enumerate(boxes):
            if np.isnan(box[0]):
                continue
            mask = np.zeros((video.height, video.width), np.uint8)
            x, y, w, h = np.round(box).astype(int)
            mask[y:y + h, x:x + w] = 1
            out[f] = mask
        for s in scribbles:
            pts = np.round(s.points).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out[s.frame], [pts], False, int(s.positive), thickness=int(2 * s.radius + 1))
            for x, y in pts.reshape(-1, 2):  # a one-point stroke is a click
                cv2.circle(out[s.frame], (int(x), int(y)), int(s.radius), int(s.positive), -1)
        return MaskResult({f: m.astype(bool) for f, m in out.items()}, {}, 0.01)


def test_loop_runs_box_stage_then_rounds_of_scribbles(root: Path) -> None:
    engine = BoxFill()
    (res,) = run_eval(engine, Interp(), root, ["disk"], rounds=3)
    assert res.frames == 8 and res.box_clicks == 2  # linear motion: first and last box suffice
    np.testing.assert_allclose(engine.calls[0][0][:, 0], [cx - R for cx, _ in CENTRES], atol=0.5)
    first, last = res.rounds[0], res.rounds[-1]
    assert first.frame is None and first.strokes == 0 and first.frames_scribbled == 0
    assert 0.7 < first.j < 0.85  # a filled box around a disk: about pi/4
    assert len(res.rounds) == 4 and last.j > first.j  # negative strokes erase box corners
    scribbles = engine.calls[-1][1]
    assert last.strokes == len(scribbles) and all(not s.positive for s in scribbles)
    assert last.frames_scribbled == len({s.frame for s in scribbles}) == len({r.frame for r in res.rounds[1:]})
    assert res.clicks == 2 + len(scribbles)
    assert sum(len(r.added) for r in res.rounds) == len(scribbles) and res.rounds[0].added == []
    assert all(a["frame"] == r.frame for r in res.rounds[1:] for a in r.added)
    for (_, before, _), (_, after, previous) in zip(engine.calls, engine.calls[1:]):
        assert after[: len(before)] == before and len(after) > len(before)  # strokes accumulate
        assert previous is not None
    assert len(res.final_frame_jf) == 8 and np.mean(res.final_frame_jf) == pytest.approx(last.jf, abs=1e-3)


def test_worst_frame_is_scribbled_first(root: Path) -> None:
    class OneBad(BoxFill):
        def run(self, video, boxes, scribbles, previous=None) -> MaskResult:
            result = super().run(video, boxes, scribbles, previous)
            result.masks[5] = np.zeros((H, W), bool)  # frame 5 is lost entirely
            return result

    (res,) = run_eval(OneBad(), Interp(), root, ["disk"], rounds=1)
    assert res.rounds[1].frame == 5


def test_frames_without_a_box_are_not_scribbled() -> None:
    gts = [disk_mask(cx, cy) for cx, cy in CENTRES]
    boxes = np.array([[cx - R, cy - R, 2 * R + 1, 2 * R + 1] for cx, cy in CENTRES], float)
    boxes[5] = np.nan  # lost there: the engine gives no mask, the worst frame, but the engine refuses strokes there
    engine = BoxFill()
    rounds, _ = mask_stage(engine, types.SimpleNamespace(width=W, height=H), boxes, gts, rounds=2)
    assert 5 not in {r.frame for r in rounds} and rounds[1].frame is not None


def test_a_perfect_engine_stops_after_round_zero(root: Path) -> None:
    class Oracle:
        def run(self, video, boxes, scribbles, previous=None) -> MaskResult:
            return MaskResult({i: disk_mask(cx, cy) for i, (cx, cy) in enumerate(CENTRES)}, {}, 0.0)

    gts = [disk_mask(cx, cy) for cx, cy in CENTRES]
    rounds, final = mask_stage(Oracle(), None, np.tile([0.0, 0.0, 10.0, 10.0], (8, 1)), gts, rounds=8)
    assert len(rounds) == 1 and rounds[0].jf == 1.0 and np.all(final == 1.0)
    assert ev.curve(SequenceEval("x", 8, 1, 1.0, 0.0, rounds), 8) == [1.0] * 9


def test_budget_round_is_the_last_with_at_most_four_frames() -> None:
    rounds = [Round(r, 0.5, 0.5, 0.5 + r / 100, None if r == 0 else r, 2 * r, r, 1.0) for r in range(7)]
    res = SequenceEval("x", 10, 3, 0.8, 0.0, rounds)
    assert res.at_budget().round == 4 and res.to_dict()["jf_at_4_frames"] == pytest.approx(0.54)
    assert res.to_dict()["clicks_at_4_frames"] == 3 + 8 and res.clicks == 3 + 12
    assert res.seconds_per_frame() == pytest.approx(0.1)


def test_eval_command_writes_json_plot_and_table(root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    fake = types.ModuleType("scribblebox.models.mask_engine")
    fake.MaskEngine = BoxFill
    monkeypatch.setitem(sys.modules, "scribblebox.models.mask_engine", fake)
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    args = Namespace(root=str(root), sequences=None, max_frames=6, rounds=2, output=str(out), plot=str(plot))
    assert eval_command(load_settings(env={}), args) == 0
    doc = json.loads(out.read_text())
    assert [s["name"] for s in doc["sequences"]] == ["disk"]  # "empty" has no object: skipped
    seq = doc["sequences"][0]
    assert seq["frames"] == 6 and seq["box_clicks"] >= 1 and len(seq["rounds"]) == 3
    assert doc["overall"]["sequences"] == 1 and len(doc["overall"]["jf"]) == 3
    assert doc["overall"]["jf_at_4_frames"] == pytest.approx(seq["jf_at_4_frames"])
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[2] == 3
    table = capsys.readouterr().out
    assert "disk" in table and "overall" in table and "JF@4f" in table


def test_bad_rounds_and_empty_folder_are_clear_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rounds"):
        run_eval(BoxFill(), Interp(), root, ["disk"], rounds=-1)
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="no <seq>"):
        run_eval(BoxFill(), Interp(), tmp_path / "void")


@needs_davis
def test_real_davis_sequence_few_frames() -> None:
    name = sorted(p.name for p in DAVIS.iterdir() if (p / "masks").is_dir())[0]
    engine = BoxFill()
    (res,) = run_eval(engine, CurveVotMethod(load_settings(env={})), DAVIS, [name], max_frames=4, rounds=2)
    assert res.frames == 4 and res.box_iou >= 0.7
    assert engine.calls[0][0].shape == (4, 4) and not np.isnan(engine.calls[0][0]).any()
    first, last = res.rounds[0], res.rounds[-1]
    assert 0.2 < first.j < 0.95 and 0 < first.f < 1  # a filled box is a rough mask of a real object
    assert last.j >= first.j and last.frames_scribbled >= 1
