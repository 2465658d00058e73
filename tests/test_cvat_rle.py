"""CVAT mask RLE: exact agreement with cvat_sdk.masks both ways, and clear errors for bad RLEs."""
from __future__ import annotations

import numpy as np
import pytest
from cvat_sdk.masks import decode_mask, encode_mask

from scribblebox.backend.cvat import rle


def masks(seed: int = 0):
    rng = np.random.default_rng(seed)
    yield np.ones((3, 5), bool)
    yield np.eye(6, 9, dtype=bool)
    single = np.zeros((7, 4), bool)
    single[6, 3] = True
    yield single
    for _ in range(40):
        h, w = rng.integers(1, 40, 2)
        yield rng.random((h, w)) < rng.uniform(0.05, 0.95)
    blob = np.zeros((30, 50), bool)
    blob[5:20, 0:50] = True  # touches both sides
    yield blob


def test_the_documented_example():
    mask = np.zeros((20, 30), bool)
    mask[10:13, 20:24] = True
    assert rle.encode(mask) == [0, 12, 20, 10, 23, 12]
    assert encode_mask(mask) == [0, 12, 20, 10, 23, 12]


@pytest.mark.parametrize("seed", [0, 1])
def test_encode_and_decode_agree_with_cvat_sdk(seed):
    for mask in masks(seed):
        ours = rle.encode(mask)
        assert ours == encode_mask(mask)
        h, w = mask.shape
        assert np.array_equal(rle.decode(ours, w, h), decode_mask(ours, image_width=w, image_height=h))
        assert np.array_equal(rle.decode(ours, w, h), mask)
        bounds = [0, 0, w, h]
        assert rle.encode(mask, bounds) == encode_mask(mask, bbox=bounds)


def test_empty_mask_matches_the_sdk():
    empty = np.zeros((4, 4), bool)
    assert rle.encode(empty) == encode_mask(empty) == [1, 0, 0, 0, 0]
    assert rle.crop(empty) is None


def test_crop_returns_inclusive_bounds():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    crop, bounds = rle.crop(mask)
    assert bounds == (3, 2, 8, 4) and crop.shape == (3, 6) and crop.all()


@pytest.mark.parametrize("bad, message", [
    ([1, 2, 3], "at least one run"),
    ([4, 0, 0, 1, 1.5], "whole number"),
    ([4, 0, 0, 1, "1"], "must be a number"),
    ([4, 0, 0, 10, 1], "not inside the 8x6 image"),
    ([3, 0, 0, 1, 1], "cover 3 pixels"),
    ([-1, 5, 0, 0, 1, 1], "must not be negative"),
])
def test_decode_refuses_bad_rles(bad, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(bad, 8, 6)


def test_encode_refuses_non_bool_and_bad_bounds():
    with pytest.raises(ValueError, match="2-D bool"):
        rle.encode(np.ones((3, 3), np.uint8))
    with pytest.raises(ValueError, match="not a non-empty box"):
        rle.encode(np.ones((3, 3), bool), [0, 0, 4, 3])
