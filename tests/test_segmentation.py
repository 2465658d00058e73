"""Interactive segmentation of one frame (GrabCut in a crop around the box), its crop geometry and stroke rules."""
from __future__ import annotations

import numpy as np
import pytest
from scribblebox.models.masks import Scribble
from scribblebox.models.segmentation import (
    GrabCutSegmenter,
    enforce_strokes,
    keep_components,
    satisfies,
    stroke_map,
    window_for,
)
from scribblebox.models.synthetic import moving_box_scene

SIZE = (320, 240)


def box_mask(box: np.ndarray, shape=(SIZE[1], SIZE[0])) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(shape, dtype=bool)
    mask[round(y):round(y + h), round(x):round(x + w)] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def stroke_pixels(scribble: Scribble, shape=(SIZE[1], SIZE[0])) -> np.ndarray:
    """Where a stroke is drawn, rasterised as the segmenter does."""
    from scribblebox.models.segmentation import draw_stroke
    canvas = np.zeros(shape, dtype=np.int8)
    draw_stroke(canvas, scribble.points, scribble.radius, 1)
    return canvas > 0


@pytest.fixture(scope="module")
def scene():
    return moving_box_scene(4, SIZE, start=(60, 50, 120, 90), velocity=(3, 1), seed=3)


def test_box_alone_finds_a_textured_object(scene) -> None:
    frame, box = scene.render(0), scene.boxes[0]
    # a looser box, as a tracker gives: the object must still be found, not the whole box
    loose = box + np.array([-12, -9, 24, 18])
    mask = GrabCutSegmenter().segment(frame, loose, [])
    assert mask.shape == frame.shape[:2] and mask.dtype == bool
    assert iou(mask, box_mask(box)) > 0.8


def test_positive_stroke_ends_inside_and_negative_outside(scene) -> None:
    frame, box = scene.render(0), scene.boxes[0]
    x, y, w, h = box
    # a positive stroke on the background just right of the object, a negative one across the object's middle
    positive = Scribble(0, np.array([[x + w + 8, y + 10], [x + w + 8, y + h - 10]]), True, 3.0)
    negative = Scribble(0, np.array([[x + 10, y + h / 2], [x + w - 10, y + h / 2]]), False, 4.0)
    seg = GrabCutSegmenter()
    plain = seg.segment(frame, box, [])
    mask = seg.segment(frame, box, [positive, negative], prior=plain)
    assert np.all(mask[stroke_pixels(positive)])
    assert not np.any(mask[stroke_pixels(negative)])
    assert satisfies(mask, [positive, negative]) and not satisfies(plain, [positive, negative])


def test_a_correction_fixes_the_stroked_regions_and_keeps_the_rest(scene) -> None:
    frame, box = scene.render(0), scene.boxes[0]
    x, y, w, h = box
    truth = box_mask(box)
    prior = truth.copy()
    prior[int(y):int(y + h), int(x + w):int(x + w + 24)] = True  # a strip of background wrongly included
    prior[int(y + h - 25):int(y + h), int(x):int(x + w)] = False  # the object's bottom strip missed
    left = np.zeros_like(truth)
    left[int(y + 10):int(y + h - 35), int(x - 12):int(x)] = True  # wrong too, but the user did not stroke it
    prior |= left
    negative = Scribble(0, np.array([[x + w + 12, y + 8], [x + w + 12, y + h - 8]]), False, 3.0)
    positive = Scribble(0, np.array([[x + 10, y + h - 12], [x + w - 10, y + h - 12]]), True, 3.0)
    mask = GrabCutSegmenter().segment(frame, box, [negative, positive], prior=prior)
    assert iou(prior, truth) < 0.75
    assert iou(mask & ~left, truth) > 0.9
    # a correction is local: what the strokes did not touch keeps the prior (up to the band)
    assert np.count_nonzero(mask & left) > 0.8 * np.count_nonzero(left)


def test_a_positive_stroke_only_grows_the_mask_and_a_negative_one_only_shrinks_it(scene) -> None:
    """Near a positive stroke the prior's inside stays sure foreground (only its outside is freed), near a negative
    one its outside stays sure background: fixing a missed leg must not let GrabCut drop the rider above it."""
    import cv2

    frame, box = scene.render(0), scene.boxes[0]
    x, y, w, h = box
    prior = box_mask(box)
    prior[int(y + h - 25):int(y + h), :] = False  # the bottom strip missed
    positive = Scribble(0, np.array([[x + 10, y + h - 12], [x + w - 10, y + h - 12]]), True, 3.0)
    negative = Scribble(0, np.array([[x + 20, y + 20], [x + w - 20, y + 20]]), False, 3.0)
    seg = GrabCutSegmenter()
    window = window_for([box], SIZE[0], SIZE[1], seg.work_size, seg.margin)
    inside = window.take(prior) > 0.5
    core = cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # the prior's inside, off its band
    rim = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0  # its outside, off its band
    grow = seg.labels(window, box, [positive], prior, ())
    assert np.all(grow[core] == cv2.GC_FGD)  # nothing inside may go ...
    assert np.any(grow[rim] == cv2.GC_PR_BGD)  # ... while the outside near the stroke is free to join
    shrink = seg.labels(window, box, [negative], prior, ())
    assert np.all(shrink[rim] == cv2.GC_BGD)  # nothing outside may join ...
    assert np.any(shrink[core] == cv2.GC_PR_FGD)  # ... while the inside near the stroke is free to leave


def test_enforce_strokes_keeps_touched_pieces_and_drops_specks() -> None:
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:40, 10:40] = True  # the object
    mask[50:52, 70:72] = True  # a speck GrabCut left behind
    mask[5:8, 60:63] = True  # a small piece the user marked as object
    keep = Scribble(0, np.array([[61.0, 6.0]]), True, 1.0)
    cut = Scribble(0, np.array([[10.0, 25.0], [39.0, 25.0]]), False, 1.0)  # splits the object in two halves
    out = enforce_strokes(mask, [keep, cut], keep_fraction=0.1)
    assert out[6, 61] and not out[51, 71]
    assert not out[25, 20] and out[15, 20] and out[35, 20]


def test_later_stroke_wins_where_strokes_overlap() -> None:
    window = window_for([np.array([10, 10, 40, 40])], 100, 100, 64, 0.2)
    a = Scribble(0, np.array([[20.0, 30.0], [40.0, 30.0]]), True, 2.0)
    b = Scribble(0, np.array([[30.0, 20.0], [30.0, 40.0]]), False, 2.0)
    marks = stroke_map([a, b], window)
    centre = np.round(window.to_work([[30.0, 30.0]])[0]).astype(int)
    assert marks[centre[1], centre[0]] == -1 and (marks > 0).any()


def test_window_maps_points_and_masks_both_ways() -> None:
    window = window_for([np.array([100.5, 40.0, 200.0, 120.0])], 640, 360, 256, 0.2)
    assert max(window.w, window.h) == 256
    points = np.array([[150.0, 80.0], [250.0, 130.5]])
    assert np.allclose(window.to_frame(window.to_work(points)), points)
    mask = box_mask(np.array([120, 60, 160, 90]), (360, 640))
    back = window.paste(window.take(mask), (360, 640))
    assert iou(back, mask) > 0.97
    other = window_for([np.array([90.0, 30.0, 230.0, 150.0])], 640, 360, 200, 0.25)
    assert np.abs(window.convert(window.take(mask), other) - other.take(mask)).mean() < 0.02


def test_keep_components_drops_small_pieces_unless_anchored() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:30, 5:30] = True
    mask[40:42, 40:42] = True
    assert not keep_components(mask, None, 0.1)[41, 41]
    anchors = np.zeros_like(mask)
    anchors[41, 41] = True
    assert keep_components(mask, anchors, 0.1)[41, 41]


def test_results_repeat_and_bad_inputs_say_what_to_do(scene) -> None:
    frame, box = scene.render(1), scene.boxes[1]
    seg = GrabCutSegmenter()
    assert np.array_equal(seg.segment(frame, box, []), seg.segment(frame, box, []))
    with pytest.raises(ValueError, match="box"):
        seg.segment(frame, np.array([np.nan, 0, 10, 10]), [])
    with pytest.raises(ValueError, match="full-frame"):
        seg.segment(frame, box, [], prior=np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="work_size"):
        GrabCutSegmenter(work_size=8)
