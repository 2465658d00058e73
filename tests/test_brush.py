"""Label Studio brush RLE: exact round trips, literal runs as the LS editor writes them, speed, and the SDK's decoder."""
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from scribblebox.backend.label_studio.brush import (ALPHA_THRESHOLD, brush_result, decode_bytes, decode_mask,
                                                     encode_bytes, encode_mask)

REPO = Path(__file__).resolve().parents[1]


def blob(width=854, height=480, seed=0):
    """An object-like mask: two filled ellipses and a hole."""
    import cv2

    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(2):
        centre = (int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 4, 3 * height // 4)))
        cv2.ellipse(mask, centre, (width // 6, height // 5), float(rng.integers(0, 180)), 0, 360, 1, -1)
    mask[height // 2 - 5:height // 2 + 5, width // 2 - 5:width // 2 + 5] = 0
    return mask.astype(bool)


def masks_under_test():
    rng = np.random.default_rng(3)
    full = np.ones((300, 300), bool)  # one run of 360000 values: longer than a 16-bit count, cut into chunks
    return {
        "blob": blob(),
        "empty": np.zeros((48, 64), bool),
        "full": full,
        "one-pixel": np.ones((1, 1), bool),
        "noise": rng.random((37, 53)) < 0.5,
        "stripes": np.tile(np.arange(101) % 3 == 0, (7, 1)),
        "last-pixel": np.pad(np.ones((1, 1), bool), ((19, 0), (29, 0))),
    }


@pytest.mark.parametrize("name", list(masks_under_test()))
def test_round_trip_is_exact(name):
    mask = masks_under_test()[name]
    rle = encode_mask(mask)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
    out = decode_mask(rle, mask.shape[1], mask.shape[0])
    assert out.dtype == bool and out.shape == mask.shape and np.array_equal(out, mask)


def test_header_says_rgba_count_and_ls_sizes():
    rle = encode_mask(np.zeros((3, 5), bool))
    bits = "".join(f"{b:08b}" for b in rle)
    assert int(bits[:32], 2) == 3 * 5 * 4
    assert int(bits[32:37], 2) + 1 == 8
    assert [int(bits[37 + 4 * i:41 + 4 * i], 2) + 1 for i in range(4)] == [3, 4, 8, 16]


def test_general_bytes_round_trip_including_single_values():
    values = np.array([7, 7, 0, 255, 255, 255, 1, 2, 3, 3] + [9] * 300 + [4], dtype=np.uint8)
    assert np.array_equal(decode_bytes(encode_bytes(values)), values)
    assert decode_bytes(encode_bytes(np.zeros(0, np.uint8))).size == 0


def _reference_encode(values, literal_max=8):
    """A slow, independent thi.ng-style writer that also emits literal runs (as the LS editor's encoder does)."""
    out = f"{len(values):032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i] and j + 1 - i < 8:
            j += 1
        if j > i:  # a run of 2..8
            out += "1" + "00" + f"{j - i:03b}" + f"{values[i]:08b}"
            i = j + 1
        else:  # a literal of up to literal_max differing values
            k = i + 1
            while k < len(values) and k - i < literal_max and values[k] != values[k - 1]:
                k += 1
            out += "0" + "00" + f"{k - i - 1:03b}" + "".join(f"{v:08b}" for v in values[i:k])
            i = k
    out += "0" * (-len(out) % 8)
    return [int(out[n:n + 8], 2) for n in range(0, len(out), 8)]


def test_decodes_literal_runs_like_the_label_studio_editor_writes():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, 500).astype(np.uint8) * 85  # short runs and alternations
    assert np.array_equal(decode_bytes(_reference_encode(list(values))), values)
    # An RGBA stroke: colour channels with alpha, alpha decides the mask.
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[1:3, 2:5] = (200, 30, 90, 255)
    rgba[0, 0] = (200, 30, 90, ALPHA_THRESHOLD - 1)  # a faint antialiased edge: not the mask
    mask = decode_mask(_reference_encode(list(rgba.ravel())), 6, 4)
    assert np.array_equal(mask, rgba[:, :, 3] >= ALPHA_THRESHOLD) and mask.sum() == 6


@pytest.mark.parametrize("rle, message", [
    (encode_mask(np.ones((4, 4), bool)), "do not match"),
    (encode_mask(np.ones((4, 4), bool))[:8], "truncated"),
    ([1, 2, 300], "byte values"),
    ([[1, 2]], "flat list"),
])
def test_bad_rle_is_a_clear_value_error(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_mask(rle, 5, 4)


def test_encode_refuses_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 2), bool))


def test_fast_enough_for_854x480():
    mask = blob()
    encode_mask(mask)  # warm up
    start = time.perf_counter()
    for _ in range(5):
        rle = encode_mask(mask)
    encode_ms = (time.perf_counter() - start) / 5 * 1000
    start = time.perf_counter()
    for _ in range(5):
        decode_mask(rle, 854, 480)
    decode_ms = (time.perf_counter() - start) / 5 * 1000
    assert encode_ms < 25 and decode_ms < 40, (encode_ms, decode_ms)


def test_brush_result_shape():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:4] = True
    out = brush_result(mask, 4, "Person", "mask", "frames", "sb-Person-4")
    assert {k: out[k] for k in ("from_name", "to_name", "type", "original_width", "original_height", "image_rotation",
                                "item_index", "id")} == {
        "from_name": "mask", "to_name": "frames", "type": "brushlabels", "original_width": 8, "original_height": 6,
        "image_rotation": 0, "item_index": 4, "id": "sb-Person-4"}
    assert out["value"]["format"] == "rle" and out["value"]["brushlabels"] == ["Person"]
    assert np.array_equal(decode_mask(out["value"]["rle"], 8, 6), mask)
    json.dumps(out)  # plain JSON types only


def _ls_python() -> Path:
    """The Label Studio venv's python, located as tests/e2e/conftest.py does (skip without it, fail under CI)."""
    venv = Path(os.environ.get("SCRIBBLEBOX_LS_VENV") or REPO / ".cache" / "label-studio-venv")
    python = venv / "bin" / "python"
    if not (venv / "bin" / "label-studio").exists() or not python.exists():
        message = f"Label Studio venv not found at {venv}: set SCRIBBLEBOX_LS_VENV (run scripts/label-studio-venv.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return python


SDK_CHECK = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
cases = json.load(sys.stdin)
out = {}
for name, case in cases.items():
    h, w = case["shape"]
    alpha = decode_rle(case["rle"]).reshape(h, w, 4)[:, :, 3]
    mask = np.array(case["mask"], dtype=bool).reshape(h, w)
    out[name] = {"decoded_equal": bool(np.array_equal(alpha > 0, mask)) and set(np.unique(alpha)) <= {0, 255},
                 "sdk_encoding_equal": mask2rle((mask * 255).astype(np.uint8)) == case["rle"]}
print(json.dumps(out))
"""


def test_label_studio_sdk_decodes_our_encoding_exactly():
    python = _ls_python()
    cases = {name: {"shape": list(m.shape), "rle": encode_mask(m), "mask": m.ravel().astype(int).tolist()}
             for name, m in masks_under_test().items() if name != "blob"}
    small = blob(160, 90, seed=2)
    cases["blob"] = {"shape": list(small.shape), "rle": encode_mask(small), "mask": small.ravel().astype(int).tolist()}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run([str(python), "-c", SDK_CHECK], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer == {name: {"decoded_equal": True, "sdk_encoding_equal": True} for name in cases}, answer
