"""Synthetic videos: the ground-truth boxes are where the object really is, and the files are browser-playable."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from scribblebox.models.geometry import iou, mask_to_box
from scribblebox.models.synthetic import (make_moving_box_video, make_vfr_video, moving_box_scene, moving_box_track,
                                          write_video)
from scribblebox.models.video import VideoFile


def test_track_moves_the_centre_and_scales_around_it() -> None:
    boxes = moving_box_track(np.arange(11), (10, 20, 40, 30), (2, -1), 0.05)
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    np.testing.assert_allclose(centres[10] - centres[0], (20, -10))
    np.testing.assert_allclose(boxes[10, 2:], np.array([40, 30]) * 1.05**10)
    np.testing.assert_allclose(boxes[0], (10, 20, 40, 30))


@pytest.mark.parametrize("start", [(20, 15, 30, 20), (20.5, 15.5, 30, 20)])
def test_render_covers_exactly_the_box(start) -> None:
    scene = moving_box_scene(3, (96, 64), start, (4, 2), seed=1)
    for i in range(3):
        changed = np.abs(scene.render(i).astype(int) - scene.background).max(axis=2) > 0
        x, y, w, h = scene.boxes[i]
        found = mask_to_box(changed)
        # whole pixels inside; half-covered edge pixels (on .5 boxes) are blended, so the tight box may add them
        assert found[0] in (np.floor(x), np.ceil(x)) and found[1] in (np.floor(y), np.ceil(y))
        assert abs(found[0] + found[2] - (x + w)) <= 0.5 and abs(found[1] + found[3] - (y + h)) <= 0.5


def test_scene_is_deterministic() -> None:
    a, b, c = (moving_box_scene(2, (64, 48), (8, 8, 16, 12), seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.render(1), b.render(1))
    assert not np.array_equal(a.render(1), c.render(1))
    assert a.background.std() > 10, "the background must be textured, not flat"


def _luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY).astype(int)


def _locate(frame: np.ndarray, template: np.ndarray) -> tuple[int, int]:
    scores = cv2.matchTemplate(frame, template, cv2.TM_SQDIFF)
    y, x = np.unravel_index(np.argmin(scores), scores.shape)
    return int(x), int(y)


@pytest.mark.parametrize("scale_rate", [0.0, 0.01])
def test_object_is_where_the_ground_truth_says(tmp_path: Path, scale_rate: float) -> None:
    path = tmp_path / "box.mp4"
    gt = make_moving_box_video(path, num_frames=30, size=(320, 180), start=(30, 40, 60, 45), velocity=(3, 1.5),
                               scale_rate=scale_rate)
    scene = moving_box_scene(30, (320, 180), (30, 40, 60, 45), (3, 1.5), scale_rate)
    assert gt.shape == (30, 4)
    np.testing.assert_allclose(gt, scene.boxes)
    with VideoFile(path) as video:
        for i in (0, 13, 29):
            frame = video.frame(i)
            x, y, w, h = gt[i]
            template = cv2.resize(scene.texture, (round(w), round(h)), interpolation=cv2.INTER_LINEAR)
            fx, fy = _locate(frame, template)
            assert abs(fx - x) <= 1 and abs(fy - y) <= 1, (i, (fx, fy), gt[i])
            inside = (slice(int(np.ceil(y)), int(y + h)), slice(int(np.ceil(x)), int(x + w)))
            decoded = _luma(frame)[inside]  # luma: yuv420p keeps it at full resolution, unlike colour
            error = np.abs(decoded - _luma(scene.render(i))[inside]).mean()
            assert error < 6, f"frame {i}: decoded object differs from the rendering by {error:.1f}"
            assert np.abs(decoded - _luma(scene.background)[inside]).mean() > 30


def test_csrt_can_track_the_object() -> None:
    scene = moving_box_scene(8, (240, 160), (30, 40, 48, 36), (4, 2))
    tracker = cv2.TrackerCSRT_create()
    tracker.init(scene.render(0), tuple(int(v) for v in scene.boxes[0]))
    for i in range(1, 8):
        ok, box = tracker.update(scene.render(i))
        assert ok and iou(np.array(box, float), scene.boxes[i]) > 0.7, f"frame {i}"


def test_mp4_is_browser_playable_h264(tmp_path: Path) -> None:
    path = tmp_path / "box.mp4"
    make_moving_box_video(path, num_frames=5, size=(64, 48), start=(8, 8, 16, 12))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.format.name == "yuv420p"
        assert stream.average_rate == 25
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "index first (faststart), so browsers can start playing"


def test_webm_is_vp9(tmp_path: Path) -> None:
    path = tmp_path / "box.webm"
    make_moving_box_video(path, num_frames=5, size=(64, 48), start=(8, 8, 16, 12))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"


def test_vfr_video_timestamps_and_boxes(tmp_path: Path) -> None:
    times, boxes = make_vfr_video(tmp_path / "vfr.mp4", num_frames=20, fps=25, velocity=(3, 1))
    steps = np.round(np.diff(times) * 25, 6)
    assert set(steps) <= {0.5, 1.0, 2.0} and len(set(steps)) > 1
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    np.testing.assert_allclose(centres[:, 0] - centres[0, 0], 3 * 25 * times)


def test_bad_arguments_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        make_moving_box_video(tmp_path / "odd.mp4", num_frames=2, size=(65, 48), start=(8, 8, 16, 12))
    with pytest.raises(ValueError, match="cannot encode"):
        write_video(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.uint8)], codec="no-such-codec")
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="multiple of 90"):
        write_video(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.uint8)], rotation=45)
