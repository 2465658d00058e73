"""DAVIS J and F on hand-made masks whose values can be worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from scribblebox.evaluation.metrics import boundary_tolerance, disk, f_measure, jaccard, jf, seg2bmap


def square(shape: tuple[int, int], x: int, y: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y:y + side, x:x + side] = True
    return mask


def test_identical_masks_score_one_and_disjoint_masks_zero() -> None:
    a = square((100, 120), 10, 10, 20)
    assert jf(a, a) == (1.0, 1.0)
    b = square((100, 120), 80, 60, 20)  # 50+ px away: far outside the 2 px tolerance
    assert jf(a, b) == (0.0, 0.0)


def test_shifted_square_iou_is_overlap_over_union() -> None:
    a = square((100, 120), 10, 10, 20)
    b = square((100, 120), 15, 10, 20)  # overlap 15x20 = 300, union 2*400 - 300 = 500
    assert jaccard(a, b) == pytest.approx(0.6)


def test_one_pixel_shift_is_inside_the_boundary_tolerance() -> None:
    a = square((100, 120), 10, 10, 20)
    b = square((100, 120), 11, 11, 20)
    assert boundary_tolerance(a.shape) == 2  # ceil(0.008 * hypot(100, 120)) = ceil(1.25)
    assert f_measure(a, b) == 1.0
    assert jaccard(a, b) < 1.0
    far = square((100, 120), 16, 10, 20)  # 6 px: the vertical edges no longer match
    assert f_measure(a, far) < 0.8


def test_f_with_an_extra_region_is_precision_recall_of_boundary_pixels() -> None:
    gt = square((100, 120), 10, 10, 20)
    mask = gt | square((100, 120), 70, 60, 10)
    precision = seg2bmap(gt).sum() / seg2bmap(mask).sum()  # the extra square's boundary matches nothing
    assert seg2bmap(gt).sum() == 80 and precision == pytest.approx(80 / 120)
    assert f_measure(mask, gt) == pytest.approx(2 * precision / (precision + 1))
    assert f_measure(gt, mask) == pytest.approx(2 * precision / (precision + 1))  # symmetric


def test_seg2bmap_marks_pixels_that_differ_from_east_south_or_southeast() -> None:
    seg = np.zeros((4, 4), bool)
    seg[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_empty_masks_follow_davis() -> None:
    empty = np.zeros((40, 40), bool)
    full = square((40, 40), 5, 5, 10)
    assert jf(empty, empty) == (1.0, 1.0)
    assert jf(empty, full) == (0.0, 0.0)
    assert jf(full, empty) == (0.0, 0.0)


def test_davis_tolerance_and_disk_shape() -> None:
    assert boundary_tolerance((480, 854)) == 8
    assert boundary_tolerance((480, 854), bound_th=3) == 3
    d = disk(2)
    assert d.shape == (5, 5) and d.sum() == 13 and d[0, 2] == 1 and d[0, 0] == 0


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="same size"):
        jaccard(np.zeros((4, 4)), np.zeros((4, 5)))
