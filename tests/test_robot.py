"""The scribble robot on hand-made error maps: strokes inside the right region, ordered, small, and only when needed."""
from __future__ import annotations

import numpy as np
import pytest

from scribblebox.evaluation.robot import MAX_POINTS, longest_path, scribbles_for


def stroke_pixels(points: np.ndarray, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """Every pixel within `radius` of a stroke point: what an engine would paint."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, bool)
    for x, y in points:
        out |= (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
    return out


@pytest.fixture()
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GT rectangle; the mask misses a 12x60 band (FN), adds a 13x55 block outside (FP) and a 1 px sliver."""
    gt = np.zeros((100, 120), bool)
    gt[20:80, 20:100] = True
    fn = np.zeros_like(gt)
    fn[30:42, 30:90] = True
    fp = np.zeros_like(gt)
    fp[85:98, 5:60] = True
    mask = (gt & ~fn) | fp
    mask[79, 20:100] = False  # a one-pixel miss along the bottom edge: not worth a stroke
    return mask, gt, fn, fp


def test_positive_stroke_inside_the_miss_negative_inside_the_false_region(case) -> None:
    mask, gt, fn, fp = case
    strokes = scribbles_for(mask, gt, frame=7)
    assert [s.positive for s in strokes] == [True, False]
    for stroke, region in zip(strokes, (fn, fp)):
        assert stroke.frame == 7 and 2 <= len(stroke.points) <= MAX_POINTS and stroke.radius >= 1
        painted = stroke_pixels(stroke.points, stroke.radius, gt.shape)
        assert np.all(region[painted]), "the stroke spills out of its error region"


def test_stroke_is_an_ordered_polyline_along_the_region(case) -> None:
    mask, gt, _, _ = case
    positive = scribbles_for(mask, gt, frame=0)[0].points
    xs = positive[:, 0]
    assert np.all(np.diff(xs) > 0) or np.all(np.diff(xs) < 0)  # one sweep, no back-and-forth
    assert abs(xs[-1] - xs[0]) > 30  # it spans most of the 60 px band
    assert np.all(np.abs(positive[:, 1] - 35.5) <= 1)  # along the band's middle


def test_no_stroke_for_tiny_or_sliver_errors() -> None:
    gt = np.zeros((60, 60), bool)
    gt[10:50, 10:50] = True
    mask = gt.copy()
    mask[10, 10:50] = False  # one-pixel sliver
    mask[2:4, 2:4] = True  # 4 px false region
    assert scribbles_for(mask, gt, frame=0) == []
    assert scribbles_for(gt, gt, frame=0) == []


def test_only_the_largest_region_gets_a_stroke() -> None:
    gt = np.zeros((80, 80), bool)
    mask = np.zeros_like(gt)
    mask[5:15, 5:15] = True  # small false region
    mask[40:70, 30:70] = True  # large false region
    (stroke,) = scribbles_for(mask, gt, frame=2)
    assert not stroke.positive
    assert np.all((stroke.points[:, 1] >= 40) & (stroke.points[:, 1] < 70))


def test_longest_path_runs_end_to_end_of_an_l_shaped_skeleton() -> None:
    skel = np.zeros((30, 30), bool)
    skel[5, 5:25] = True  # horizontal arm
    skel[5:25, 5] = True  # vertical arm
    skel[10, 6:9] = True  # a short spur, which the path must skip
    path = longest_path(skel)
    ends = {tuple(path[0]), tuple(path[-1])}
    assert ends == {(24.0, 5.0), (5.0, 24.0)}
    assert len(path) == 38  # 20 + 20 pixels, the corner cut diagonally (8-connected)
    assert np.all(np.abs(np.diff(path, axis=0)).max(axis=1) == 1)  # consecutive pixels are neighbours


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="same size"):
        scribbles_for(np.zeros((4, 4)), np.zeros((5, 4)), frame=0)
