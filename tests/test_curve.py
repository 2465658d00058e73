import numpy as np

from scribblebox.models.curve import fit_keyframes, smooth_outliers
from scribblebox.models.geometry import interpolate, iou
from scribblebox.models.track import Keyframe, render_keyframes


def polyline(corners: list[tuple[int, list[float]]]) -> np.ndarray:
    out = []
    for (fa, ba), (fb, bb) in zip(corners, corners[1:]):
        frames = np.arange(fa, fb)
        out.append(interpolate(frames, np.array(ba, float), np.array(bb, float), fa, fb))
    out.append(np.array([corners[-1][1]], float))
    return np.concatenate(out)


def test_linear_motion_needs_only_the_two_ends():
    boxes = polyline([(0, [0, 0, 50, 40]), (50, [300, 100, 50, 40])])
    assert fit_keyframes(boxes, 0.9) == [0, 50]


def test_keyframes_land_on_the_corners_of_a_polyline():
    boxes = polyline([(0, [0, 0, 50, 40]), (20, [200, 0, 50, 40]), (40, [200, 200, 60, 50]), (60, [0, 200, 60, 50])])
    assert fit_keyframes(boxes, 0.95) == [0, 20, 40, 60]


def test_interpolated_keyframes_stay_within_tolerance_on_a_curve():
    t = np.arange(120)
    boxes = np.stack([200 + 150 * np.sin(t / 15), 150 + 80 * np.cos(t / 11), 60 + 10 * np.sin(t / 7), 40 + 0 * t], 1)
    for tolerance in (0.8, 0.9, 0.95):
        keys = fit_keyframes(boxes, tolerance)
        shown = render_keyframes([Keyframe.of(k, boxes[k]) for k in keys], len(boxes))
        assert iou(shown, boxes).min() >= tolerance - 1e-9
        assert 2 < len(keys) < 60
    assert len(fit_keyframes(boxes, 0.95)) > len(fit_keyframes(boxes, 0.8))


def test_untrusted_frames_do_not_force_keyframes():
    boxes = polyline([(0, [0, 0, 50, 40]), (40, [200, 0, 50, 40])])
    boxes[20] = [400, 300, 10, 10]  # a tracker outlier
    trusted = np.ones(len(boxes), bool)
    assert len(fit_keyframes(boxes, 0.9)) > 2
    trusted[20] = False
    assert fit_keyframes(boxes, 0.9, trusted) == [0, 40]


def test_smoothing_removes_a_single_frame_jump_but_keeps_the_ends():
    boxes = polyline([(0, [0, 0, 50, 40]), (30, [150, 0, 50, 40])])
    boxes[15] = [400, 300, 50, 40]
    boxes[0] = [1, 1, 50, 40]
    out = smooth_outliers(boxes, np.ones(len(boxes)))
    assert iou(out[15], [75, 0, 50, 40]) > 0.8
    np.testing.assert_array_equal(out[0], boxes[0])
    np.testing.assert_array_equal(out[-1], boxes[-1])
