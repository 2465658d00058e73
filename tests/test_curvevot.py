"""The Curve-VOT engine on synthetic scenes whose true boxes are known."""
from pathlib import Path

import numpy as np
import pytest

from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.geometry import iou
from scribblebox.models.segments import LOW_SCORE
from scribblebox.models.synthetic import MovingBoxScene, make_moving_box_video, moving_box_scene
from scribblebox.models.track import Keyframe, TrackResult, render_keyframes
from scribblebox.models.trackers import tracker_factory
from scribblebox.models.trackers.confidence import CONTINUITY, AppearanceScore
from scribblebox.models.video import ArrayVideo, open_video

NANO = Path(__file__).resolve().parents[2] / "shared" / "weights" / "nanotrack-v2"


def curved_scene(n: int = 60) -> MovingBoxScene:
    base = moving_box_scene(num_frames=n, size=(480, 320), start=(60, 80, 70, 60), velocity=(0, 0))
    t = np.arange(n)
    boxes = np.stack([180 + 120 * np.sin(t / 9), 120 + 70 * np.sin(t / 13), 70 + 0 * t, 60 + 0 * t], 1)
    return MovingBoxScene(base.background, base.texture, boxes)


def video_of(scene: MovingBoxScene) -> ArrayVideo:
    return ArrayVideo(np.stack(list(scene.frames())), fps=25)


@pytest.fixture(scope="module")
def curved():
    scene = curved_scene()
    return scene, video_of(scene)


def test_one_box_gives_a_good_track_with_few_keyframes(curved):
    scene, video = curved
    result = CurveVOT().track(video, [Keyframe.of(0, scene.boxes[0])])
    shown = render_keyframes(result.keyframes, video.num_frames)
    assert iou(shown, scene.boxes).mean() > 0.75
    assert iou(result.boxes, scene.boxes).mean() > 0.8
    assert 2 < len(result.keyframes) < video.num_frames / 3
    assert result.keyframes[0] == Keyframe.of(0, scene.boxes[0])


def test_linear_motion_is_two_keyframes():
    scene = moving_box_scene(num_frames=40, size=(480, 320), start=(40, 60, 80, 60), velocity=(5, 2))
    video = video_of(scene)
    result = CurveVOT().track(video, [Keyframe.of(0, scene.boxes[0])])
    assert len(result.keyframes) <= 3
    assert iou(render_keyframes(result.keyframes, 40), scene.boxes).min() > 0.7


def test_tracks_backwards_from_a_box_drawn_mid_video(curved):
    scene, video = curved
    result = CurveVOT().track(video, [Keyframe.of(30, scene.boxes[30])])
    assert iou(result.boxes[:30], scene.boxes[:30]).mean() > 0.7
    assert result.keyframes[0].frame < 5


def test_anchors_are_kept_exactly_and_the_track_passes_through_them(curved):
    scene, video = curved
    anchors = [Keyframe.of(f, scene.boxes[f]) for f in (0, 25, 59)]
    result = CurveVOT().track(video, anchors)
    for a in anchors:
        assert a in result.keyframes
        np.testing.assert_allclose(result.boxes[a.frame], a.box)


class CountingFactory:
    """Wraps a tracker factory to count frames tracked: proves corrections re-track locally."""

    def __init__(self, name: str = "csrt") -> None:
        self.inner = tracker_factory(name)
        self.updates = 0

    def __call__(self):
        tracker = self.inner()
        outer = self

        class Counted:
            def init(self, frame, box):
                tracker.init(frame, box)

            def update(self, frame):
                outer.updates += 1
                return tracker.update(frame)

        return Counted()


def test_a_correction_retracks_only_its_two_neighbouring_segments(curved):
    scene, video = curved
    engine = CurveVOT()
    engine.factory = counter = CountingFactory()
    anchors = [Keyframe.of(f, scene.boxes[f]) for f in (0, 20, 40, 59)]
    first = engine.track(video, anchors)
    before = counter.updates
    moved = scene.boxes[40] + [12, -8, 0, 0]
    corrected = anchors[:2] + [Keyframe.of(40, moved)] + anchors[3:]
    second = engine.track(video, corrected, previous=TrackResult.from_dict(first.to_dict()))
    retracked = counter.updates - before
    assert retracked <= 2 * (40 - 20) + 2 * (59 - 40)  # forward + backward of the two segments only
    np.testing.assert_array_equal(second.boxes[:21], first.boxes[:21])
    np.testing.assert_allclose(second.boxes[40], moved)
    assert not np.allclose(second.boxes[30:40], first.boxes[30:40])
    assert [k for k in second.keyframes if k.frame <= 20] == [k for k in first.keyframes if k.frame <= 20]


def test_lost_object_ends_the_track_instead_of_drifting():
    scene = moving_box_scene(num_frames=50, size=(480, 320), start=(60, 80, 70, 60), velocity=(3, 0))
    frames = np.stack(list(scene.frames()))
    frames[25:] = scene.background  # the object vanishes (occluded) from frame 25 on
    result = CurveVOT().track(ArrayVideo(frames), [Keyframe.of(0, scene.boxes[0])])
    last = result.keyframes[-1]
    assert not last.enabled and 20 <= last.frame <= 26
    assert np.isnan(result.boxes[35:, 0]).all()
    assert iou(result.boxes[:20], scene.boxes[:20]).mean() > 0.8


def test_bad_anchors_are_refused_with_a_clear_message(curved):
    _, video = curved
    engine = CurveVOT()
    with pytest.raises(ValueError, match="outside the video"):
        engine.track(video, [Keyframe.of(video.num_frames, (10, 10, 20, 20))])
    with pytest.raises(ValueError, match="outside the 480x320 frame"):
        engine.track(video, [Keyframe.of(0, (1000, 10, 20, 20))])
    with pytest.raises(ValueError, match="empty or invalid"):
        engine.track(video, [Keyframe.of(0, (10, 10, 0, 20))])
    with pytest.raises(ValueError, match="at least one anchor"):
        engine.track(video, [])
    with pytest.raises(ValueError, match="unknown tracker"):
        CurveVOT(tracker="nope")


def test_result_survives_a_json_round_trip(curved):
    scene, video = curved
    result = CurveVOT().track(video, [Keyframe.of(0, scene.boxes[0])])
    again = TrackResult.from_dict(result.to_dict())
    assert again.keyframes == [Keyframe.of(k.frame, np.round(k.box, 3), k.enabled) for k in result.keyframes]
    np.testing.assert_allclose(again.boxes, result.boxes, atol=0.01)
    assert again.segments == result.segments


def test_kcf_engine_tracks_too():
    scene = moving_box_scene(num_frames=30, size=(480, 320), start=(40, 60, 80, 60), velocity=(3, 1))
    result = CurveVOT(tracker="kcf").track(video_of(scene), [Keyframe.of(0, scene.boxes[0])])
    assert iou(result.boxes, scene.boxes).mean() > 0.7


@pytest.mark.skipif(not (NANO / "backbone.onnx").exists(), reason="NanoTrack weights (../shared/weights) not present")
def test_nanotrack_with_user_supplied_weights(curved):
    scene, video = curved
    engine = CurveVOT(tracker="nano", nano_backbone=str(NANO / "backbone.onnx"), nano_head=str(NANO / "head.onnx"))
    result = engine.track(video, [Keyframe.of(0, scene.boxes[0])])
    assert iou(result.boxes[:30], scene.boxes[:30]).mean() > 0.6


def test_nanotrack_without_weights_says_what_is_missing():
    with pytest.raises(ValueError, match="nano_backbone"):
        CurveVOT(tracker="nano")
    with pytest.raises(ValueError, match="not found"):
        CurveVOT(tracker="nano", nano_backbone="/nope/b.onnx", nano_head="/nope/h.onnx")


def test_occlusion_between_two_anchors_leaves_a_gap():
    scene = moving_box_scene(num_frames=60, size=(480, 320), start=(60, 80, 70, 60), velocity=(3, 0))
    frames = np.stack(list(scene.frames()))
    frames[20:40] = scene.background  # hidden from frame 20 to 39
    anchors = [Keyframe.of(0, scene.boxes[0]), Keyframe.of(59, scene.boxes[59])]
    result = CurveVOT().track(ArrayVideo(frames), anchors)
    assert np.isnan(result.boxes[26:34, 0]).all()
    ends = [k for k in result.keyframes if not k.enabled]
    assert len(ends) == 1 and 14 <= ends[0].frame <= 21
    assert iou(result.boxes[:15], scene.boxes[:15]).mean() > 0.8
    assert iou(result.boxes[45:], scene.boxes[45:]).mean() > 0.8
    shown = render_keyframes(result.keyframes, 60)
    assert np.isnan(shown[26:34, 0]).all() and iou(shown[45:], scene.boxes[45:]).mean() > 0.75


def test_a_long_track_is_not_ended_while_the_object_is_in_view(tmp_path):
    """1,000 frames of a slowly drifting box: CSRT's box slides a few pixels off over time, which the first
    frame's template alone read as loss (the track ended at frame 641); the recent template keeps it."""
    path = tmp_path / "long.mp4"
    truth = make_moving_box_video(path, num_frames=1000, velocity=(0.44, 0.2))
    with open_video(path) as video:
        result = CurveVOT().track(video, [Keyframe.of(0, truth[0])])
    assert not np.isnan(result.boxes[:, 0]).any()
    assert all(k.enabled for k in result.keyframes)
    assert iou(result.boxes, truth).min() > 0.5


def test_appearance_score_follows_slow_change_but_not_a_jump():
    """Continuity keeps a slowly changing object above the loss threshold, never as high as the first frame's
    match; an unrelated patch (occluder, drift onto the background) still scores as lost."""
    rng = np.random.default_rng(0)
    start, end, other = (rng.integers(0, 256, (64, 64, 3)).astype(np.float64) for _ in range(3))
    box = np.array([0, 0, 64, 64])
    score = AppearanceScore(start.astype(np.uint8), box)
    for t in np.linspace(0, 1, 41)[1:]:
        last = score(((1 - t) * start + t * end).astype(np.uint8), box)
    assert LOW_SCORE < last <= CONTINUITY
    assert score(other.astype(np.uint8), box) < LOW_SCORE
    assert score(start.astype(np.uint8), box) > 0.95
