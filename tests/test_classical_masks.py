"""The classical mask engine on a synthetic scene whose true mask is known (the object is a filled rectangle)."""
import numpy as np
import pytest

from scribblebox.models.mask_engine import MaskEngine
from scribblebox.models.masks import Scribble
from scribblebox.models.segmentation import GrabCutSegmenter, satisfies
from scribblebox.models.synthetic import moving_box_scene
from scribblebox.models.video import ArrayVideo
from scribblebox.settings import MaskSettings


def box_mask(box, shape) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in box)
    mask = np.zeros(shape, bool)
    mask[y:y + h, x:x + w] = True
    return mask


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def scene():
    s = moving_box_scene(num_frames=20, size=(320, 240), start=(80, 70, 90, 70), velocity=(3, 1))
    return s, ArrayVideo(np.stack(list(s.frames())))


def test_box_alone_segments_the_object(scene):
    s, video = scene
    loose = s.boxes[0] + [-8, -8, 16, 16]
    mask = GrabCutSegmenter().segment(video.frame(0), loose, [])
    assert mask.shape == (240, 320)
    assert jaccard(mask, box_mask(s.boxes[0], mask.shape)) > 0.7


def test_strokes_are_respected(scene):
    s, video = scene
    x, y, w, h = s.boxes[0]
    loose = s.boxes[0] + [-20, -20, 40, 40]
    strokes = [Scribble(0, np.array([[x + 10, y + 10], [x + w - 10, y + h - 10]]), True),
               Scribble(0, np.array([[x - 15, y - 15], [x - 15, y + h + 10]]), False)]
    mask = GrabCutSegmenter().segment(video.frame(0), loose, strokes)
    assert satisfies(mask, strokes)


def test_engine_propagates_an_approved_mask_through_the_track(scene):
    s, video = scene
    engine = MaskEngine.from_settings(MaskSettings())
    approved = {0: box_mask(s.boxes[0], (240, 320))}
    result = engine.run(video, s.boxes, [], approved=approved)
    assert set(result.masks) == set(range(20))
    assert np.array_equal(result.masks[0], approved[0])
    scores = [jaccard(result.masks[f], box_mask(s.boxes[f], (240, 320))) for f in range(20)]
    assert min(scores) > 0.6 and np.mean(scores) > 0.75


def test_engine_refuses_strokes_without_a_box_and_wrong_sized_masks(scene):
    s, video = scene
    boxes = s.boxes.copy()
    boxes[5] = np.nan
    engine = MaskEngine.from_settings(MaskSettings())
    with pytest.raises(ValueError, match="no box"):
        engine.run(video, boxes, [Scribble(5, np.array([[10.0, 10.0]]), True)])
    with pytest.raises(ValueError, match="video is 320x240"):
        engine.run(video, s.boxes, [], approved={0: np.zeros((10, 10), bool)})


def test_flow_quality_is_a_setting_and_a_typo_is_refused(scene):
    """masks.flow picks OpenCV's DIS preset (config or SCRIBBLEBOX_MASK_FLOW); both presets follow the object."""
    import cv2

    from scribblebox.settings import load_settings

    assert MaskEngine.from_settings(MaskSettings()).propagator.preset == cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    fast = load_settings(None, env={"SCRIBBLEBOX_MASK_FLOW": "fast"}).masks
    engine = MaskEngine.from_settings(fast)
    assert engine.propagator.preset == cv2.DISOPTICAL_FLOW_PRESET_FAST
    s, video = scene
    result = engine.run(video, s.boxes, [], approved={0: box_mask(s.boxes[0], (240, 320))})
    assert np.mean([jaccard(result.masks[f], box_mask(s.boxes[f], (240, 320))) for f in range(20)]) > 0.75
    with pytest.raises(ValueError, match="unknown masks.flow 'slow'"):
        MaskEngine.from_settings(MaskSettings(flow="slow"))



def test_both_sweeps_work_between_the_same_two_start_frames_at_a_time(monkeypatch):
    """The forward and the backward sweep (one thread each, one decoder) take their chains segment by segment in
    the same order (`fusion.by_segment`), so the second reads a frame soon after the first and finds it in the
    video's cache instead of seeking back to its keyframe (the decoding cost in docs/benchmarks.md)."""
    scene = moving_box_scene(num_frames=40, size=(160, 120), start=(30, 30, 50, 40), velocity=(1, 0.5))
    video = ArrayVideo(np.stack(list(scene.frames())))
    engine = MaskEngine.from_settings(MaskSettings())
    engine.box_anchor_every = 10
    taken: dict[int, list] = {}
    sweep = engine.propagator._sweep

    def spy(pairs, chains, *args):  # each chain as the two start frames it runs between
        taken[chains[0][1]] = [tuple(sorted((a, last + d))) for a, d, last in chains]
        return sweep(pairs, chains, *args)

    monkeypatch.setattr(engine.propagator, "_sweep", spy)
    engine.run(video, scene.boxes, [])
    assert len(taken[1]) >= 3 and taken[1] == sorted(taken[1]) == taken[-1]
