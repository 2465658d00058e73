"""CVAT's mask RLE: ``[runs..., left, top, right, bottom]`` over the mask's box (inclusive corners).

Runs go row-major over the crop and always start with a run of zeros (0 when the crop starts with a 1).
A 3x4 all-ones crop at (20, 10) is ``[0, 12, 20, 10, 23, 12]``. Same format as `cvat_sdk.masks`
(the tests check both ways), kept here so the nuclio images need numpy only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Bounds = tuple[int, int, int, int]  # left, top, right, bottom: inclusive pixel indices


def tight_bounds(mask: np.ndarray) -> Bounds | None:
    """Inclusive box of the non-zero pixels, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def encode(mask: np.ndarray, bounds: Sequence[float] | None = None) -> list[int]:
    """Full-frame bool mask (H, W) -> CVAT RLE over its tight box, or over `bounds` = [x1, y1, x2, y2]
    (exclusive corner, as `cvat_sdk.masks.encode_mask` takes it). An empty mask encodes as one zero pixel at (0, 0)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a 2-D bool array, got {mask.dtype} {mask.shape}")
    if bounds is None:
        tight = tight_bounds(mask)
        left, top, right, bottom = tight if tight is not None else (0, 0, 0, 0)
    else:
        left, top = (math.floor(v) for v in bounds[:2])
        right, bottom = (math.ceil(v) - 1 for v in bounds[2:4])
        if not (0 <= left <= right < mask.shape[1] and 0 <= top <= bottom < mask.shape[0]):
            raise ValueError(f"bounds {list(bounds)} are not a non-empty box inside the "
                             f"{mask.shape[1]}x{mask.shape[0]} mask")
    flat = mask[top:bottom + 1, left:right + 1].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs + [left, top, right, bottom]


def _as_int(value: float, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"mask RLE {where} must be a number, got {value!r}")
    if not float(value).is_integer():
        raise ValueError(f"mask RLE {where} must be a whole number, got {value!r}")
    return int(value)


def decode(rle: Sequence[float], width: int, height: int) -> np.ndarray:
    """CVAT RLE -> full-frame bool mask (height, width); ValueError says what is wrong with a bad RLE."""
    if not isinstance(rle, (list, tuple)) or len(rle) < 5:
        raise ValueError("a mask RLE needs at least one run and the four box values [left, top, right, bottom]")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    values = [_as_int(v, f"value #{i}") for i, v in enumerate(rle)]
    *runs, left, top, right, bottom = values
    if not (0 <= left <= right < width and 0 <= top <= bottom < height):
        raise ValueError(f"mask box [{left}, {top}, {right}, {bottom}] is not inside the {width}x{height} image")
    if min(runs) < 0:
        raise ValueError("mask RLE runs must not be negative")
    w, h = right - left + 1, bottom - top + 1
    if sum(runs) != w * h:
        raise ValueError(f"mask RLE runs cover {sum(runs)} pixels, its {w}x{h} box has {w * h}")
    crop = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(h, w)
    out = np.zeros((height, width), dtype=bool)
    out[top:bottom + 1, left:right + 1] = crop
    return out


def crop(mask: np.ndarray) -> tuple[np.ndarray, Bounds] | None:
    """The tight crop of a mask and its inclusive bounds (what an interactor answers), or None when empty."""
    bounds = tight_bounds(mask)
    if bounds is None:
        return None
    left, top, right, bottom = bounds
    return np.asarray(mask[top:bottom + 1, left:right + 1], dtype=bool), bounds
