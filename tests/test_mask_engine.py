"""The mask engine end to end: box track (+ strokes, + the last result) -> a mask on every boxed frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scribblebox.models.mask_engine import MaskEngine
from scribblebox.models.masks import MaskResult, Scribble
from scribblebox.models.synthetic import moving_box_scene
from scribblebox.models.video import ArrayVideo, FrameFolder

from scribblebox.settings import MaskSettings

SIZE = (320, 240)
VELOCITY = np.array([3.0, 1.0])
DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train"


@pytest.fixture(scope="module")
def scene():
    return moving_box_scene(30, SIZE, start=(40, 60, 90, 70), velocity=tuple(VELOCITY), seed=2)


@pytest.fixture(scope="module")
def video(scene):
    return ArrayVideo(np.stack(list(scene.frames())))


@pytest.fixture(scope="module")
def engine():
    return MaskEngine.from_settings(MaskSettings())


def object_mask(box: np.ndarray) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    mask[round(y):round(y + h), round(x):round(x + w)] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def stroke_pixels(points: np.ndarray, radius: float) -> np.ndarray:
    from scribblebox.models.segmentation import draw_stroke
    canvas = np.zeros((SIZE[1], SIZE[0]), dtype=np.int8)
    draw_stroke(canvas, points, radius, 1)
    return canvas > 0


def test_from_the_box_track_alone(engine, scene, video) -> None:
    result = engine.run(video, scene.boxes, [])
    assert isinstance(result, MaskResult) and result.approved == {} and result.seconds > 0
    assert sorted(result.masks) == list(range(video.num_frames))
    assert min(iou(result.masks[f], object_mask(scene.boxes[f])) for f in result.masks) > 0.8


def test_a_correction_is_respected_and_carried_to_neighbouring_frames(engine, scene, video) -> None:
    first = engine.run(video, scene.boxes, [])
    k = 12
    x, y, w, h = scene.boxes[k]
    # "this is not the object": a negative stroke down the object's right part
    stroke = Scribble(k, np.array([[x + w - 15, y + 8], [x + w - 15, y + h - 8]]), False, 4.0)
    result = engine.run(video, scene.boxes, [stroke], previous=first)
    assert sorted(result.approved) == [k] and np.array_equal(result.masks[k], result.approved[k])
    assert not np.any(result.masks[k][stroke_pixels(stroke.points, stroke.radius)])
    for f in (k - 2, k - 1, k + 1, k + 2):  # the stroke, moved with the object, is background there too
        moved = stroke_pixels(stroke.points + (f - k) * VELOCITY, 2.0)
        assert np.count_nonzero(result.masks[f] & moved) < 0.2 * np.count_nonzero(moved), f
        assert np.count_nonzero(first.masks[f] & moved) > 0.8 * np.count_nonzero(moved)


def test_unchanged_strokes_keep_their_approved_mask(engine, scene, video) -> None:
    x, y, _w, _h = scene.boxes[5]
    stroke = Scribble(5, np.array([[x + 20, y + 20], [x + 50, y + 30]]), True, 3.0)
    once = engine.run(video, scene.boxes, [stroke])
    twice = engine.run(video, scene.boxes, [stroke], previous=once)
    assert twice.approved[5] is once.masks[5]  # not re-segmented: nothing new on that frame
    fresh = engine.run(video, scene.boxes, [stroke])
    assert all(np.array_equal(fresh.masks[f], once.masks[f]) for f in once.masks)  # same inputs, same output


def test_frames_without_a_box_get_no_mask(engine, scene, video) -> None:
    boxes = scene.boxes.copy()
    boxes[:3] = np.nan
    result = engine.run(video, boxes, [])
    assert min(result.masks) == 3 and len(result.masks) == video.num_frames - 3


def test_bad_inputs_say_what_to_do(engine, scene, video) -> None:
    with pytest.raises(ValueError, match="unknown mask engine"):
        MaskEngine.from_settings(MaskSettings(engine="nope"))
    with pytest.raises(ValueError, match="num_frames"):
        engine.run(video, scene.boxes[:5], [])
    boxes = scene.boxes.copy()
    boxes[4] = np.nan
    with pytest.raises(ValueError, match="no box"):
        engine.run(video, boxes, [Scribble(4, np.array([[50.0, 80.0]]), True)])
    with pytest.raises(ValueError, match="outside the video"):
        engine.run(video, scene.boxes, [Scribble(99, np.array([[50.0, 80.0]]), True)])


@pytest.mark.skipif(not (DAVIS / "car-turn").is_dir(), reason="DAVIS 2016 data not available")
def test_a_real_sequence_from_its_boxes(engine) -> None:
    """A guard on real footage: 20 frames of DAVIS car-turn from its tight boxes alone."""
    import cv2
    from scribblebox.models.geometry import mask_to_box

    from scribblebox.evaluation.davis import Clip
    video = Clip(FrameFolder(DAVIS / "car-turn" / "frames"), 20)
    gts = [cv2.imread(str(DAVIS / "car-turn" / "masks" / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE) > 127
           for i in range(20)]
    boxes = np.stack([mask_to_box(m) for m in gts])
    result = engine.run(video, boxes, [])
    assert np.mean([iou(result.masks[f], gts[f]) for f in range(20)]) > 0.75
