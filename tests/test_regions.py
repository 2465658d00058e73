"""Label Studio videorectangle <-> keyframes, and labeling-config parsing, with LS 1.23.2 payload shapes."""
import copy

import numpy as np
import pytest

from scribblebox.backend.label_studio.config import parse_label_config
from scribblebox.backend.label_studio.regions import Timeline, fit_in_frame, keyframes_region, region_keyframes
from scribblebox.models.track import Keyframe

# As Label Studio 1.23.2 stores it (see docs/label-studio.md): 1-based frames, percent units.
REGION = {
    "id": "_2StHRvFvY", "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
    "value": {"framesCount": 50, "duration": 2.0, "labels": ["Person"],
              "sequence": [{"frame": 1, "x": 35.78, "y": 25, "width": 42.81, "height": 37.5, "rotation": 0, "enabled": True, "time": 0.04},
                           {"frame": 41, "x": 85.78, "y": 25, "width": 14.22, "height": 37.5, "rotation": 0, "enabled": False, "time": 1.6}]},
}
TL = Timeline.identity(640, 480, 25.0, 50)


def test_region_to_keyframes_is_zero_based_and_in_pixels():
    kfs = region_keyframes(REGION, TL)
    assert [k.frame for k in kfs] == [0, 40]
    assert kfs[0].box == pytest.approx((0.3578 * 640, 0.25 * 480, 0.4281 * 640, 0.375 * 480))
    assert [k.enabled for k in kfs] == [True, False]


def test_keyframes_to_region_keeps_id_labels_and_writes_ls_units():
    kfs = [Keyframe.of(0, [64, 48, 320, 240]), Keyframe.of(9, [128, 96, 320, 240]), Keyframe.of(30, [100, 100, 50, 50], False)]
    out = keyframes_region(REGION, kfs, TL, score=0.9)
    assert out["id"] == REGION["id"] and out["from_name"] == "box" and out["to_name"] == "video"
    assert out["type"] == "videorectangle" and out["score"] == 0.9
    value = out["value"]
    assert value["labels"] == ["Person"] and value["framesCount"] == 50 and value["duration"] == 2.0
    first, second, third = value["sequence"]
    assert first == {"frame": 1, "x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0, "enabled": True, "time": 0.0}
    assert second["frame"] == 10 and second["time"] == pytest.approx(9 / 25)
    assert third["enabled"] is False
    assert REGION["value"]["sequence"][0]["frame"] == 1, "the input region must not be modified"


def test_pixels_percent_pixels_round_trip():
    rng = np.random.default_rng(0)
    tl = Timeline.identity(1920, 1080, 30.0, 300)
    region = {**REGION, "value": {**REGION["value"], "framesCount": 300}}
    for _ in range(200):
        x, y = rng.uniform(0, 1800), rng.uniform(0, 1000)
        box = (x, y, rng.uniform(1, 1920 - x), rng.uniform(1, 1080 - y))
        frame = int(rng.integers(0, 300))
        back = region_keyframes(keyframes_region(region, [Keyframe.of(frame, box)], tl), tl)
        assert back[0].frame == frame
        np.testing.assert_allclose(back[0].box, box, rtol=1e-6, atol=1e-9)


def test_partly_outside_boxes_are_clipped():
    region = copy.deepcopy(REGION)
    region["value"]["sequence"][0].update(x=-10, y=90, width=30, height=20)
    kf = region_keyframes(region, TL)[0]
    assert kf.box == pytest.approx((0, 0.9 * 480, 0.2 * 640, 0.1 * 480))


@pytest.mark.parametrize("change, message", [
    ({"x": 120}, "outside the frame"),
    ({"x": -50, "width": 20}, "outside the frame"),
    ({"width": -5}, "negative box size"),
    ({"frame": 51}, "beyond framesCount"),
    ({"frame": 0}, "1-based"),
    ({"x": "12"}, "finite number"),
    ({"y": float("nan")}, "finite number"),
])
def test_invalid_keyframes_raise_clear_errors(change, message):
    region = copy.deepcopy(REGION)
    region["value"]["sequence"][0].update(change)
    with pytest.raises(ValueError, match=message):
        region_keyframes(region, TL)


def test_wrong_type_or_missing_sequence():
    with pytest.raises(ValueError, match="videorectangle"):
        region_keyframes({**REGION, "type": "rectanglelabels"}, TL)
    with pytest.raises(ValueError, match="sequence"):
        region_keyframes({**REGION, "value": {"framesCount": 50}}, TL)


def test_repeated_frame_keeps_last_entry():
    region = copy.deepcopy(REGION)
    region["value"]["sequence"].append({**region["value"]["sequence"][0], "x": 0})
    kfs = region_keyframes(region, TL)
    assert [k.frame for k in kfs] == [0, 40] and kfs[0].box[0] == 0


def test_timeline_maps_by_time_when_rates_differ():
    # LS at 24 fps over a 48 fps video: LS frame f shows video frame 2(f-1); video frames in between map to the nearest LS frame.
    tl = Timeline.build(640, 480, 24.0, 10, 20, lambda t: int(np.floor(t * 48 + 1e-6)))
    assert [tl.video_frame(f) for f in (1, 2, 10)] == [0, 2, 18]
    assert tl.ls_frame(2) == 2 and tl.ls_frame(19) == 10
    # LS at 50 fps over a 25 fps video: two LS frames per video frame; the first one is chosen.
    tl = Timeline.build(640, 480, 50.0, 20, 10, lambda t: int(np.floor(t * 25 + 1e-6)))
    assert [tl.video_frame(f) for f in (1, 2, 3, 20)] == [0, 0, 1, 9]
    assert tl.ls_frame(1) == 3
    with pytest.raises(ValueError, match="outside"):
        tl.video_frame(21)


def test_keyframes_beyond_the_region_are_clamped_to_its_last_frame():
    out = keyframes_region(REGION, [Keyframe.of(80, [10, 10, 20, 20])], Timeline.identity(640, 480, 25.0, 100))
    assert out["value"]["sequence"][0]["frame"] == 50


def test_anchor_ls_frames_are_kept_when_several_ls_frames_show_one_video_frame():
    tl = Timeline.build(640, 480, 50.0, 20, 10, lambda t: int(np.floor(t * 25 + 1e-6)))
    out = keyframes_region(REGION, [Keyframe.of(1, [10, 10, 20, 20])], tl, ls_frames={1: 4})
    assert out["value"]["sequence"][0]["frame"] == 4


def test_engine_boxes_outside_or_nan_become_drawable():
    assert fit_in_frame((700, -20, 50, 40), 640, 480) == (639, 0, 1, 20)
    kfs = [Keyframe.of(0, [10, 10, 20, 20]), Keyframe.of(5, [np.nan] * 4, False)]
    seq = keyframes_region(REGION, kfs, TL)["value"]["sequence"]
    assert seq[1]["enabled"] is False and seq[1]["x"] == seq[0]["x"]


CONFIG = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <VideoRectangle name="box" toName="video" smart="true"/>
  <Labels name="videoLabels" toName="video"><Label value="Person"/><Label value="Car"/></Labels>
</View>"""


def test_label_config_parsing():
    cfg = parse_label_config(CONFIG)
    tag = cfg.video_for("video")
    assert tag.value_key == "video" and tag.frame_rate_key == "fps"
    assert cfg.rectangles == {"box": "video"} and cfg.labels == {"video": ["Person", "Car"]}
    assert tag.fps({"video": "/x.mp4", "fps": "29.97"}, 24) == pytest.approx(29.97)
    assert tag.fps({"video": "/x.mp4"}, 24) == 24
    assert tag.url({"video": " /data/upload/1/a.mp4 "}) == "/data/upload/1/a.mp4"
    with pytest.raises(ValueError, match="no video URL under 'video'"):
        tag.url({"image": "x"})
    fixed = parse_label_config('<View><Video name="v" value="$clip" frameRate="30"/></View>').video_for("v")
    assert fixed.fps({}, 24) == 30
    assert parse_label_config('<View><Video name="v" value="$clip"/></View>').video_for("v").fps({}, 24) == 24


def test_shipped_label_config_parses():
    from importlib import resources

    xml = resources.files("scribblebox.config").joinpath("label_studio/video_tracks.xml").read_text()
    cfg = parse_label_config(xml)
    assert cfg.rectangles == {"box": "video"} and cfg.videos["video"].frame_rate_key == "fps"


@pytest.mark.parametrize("xml, message", [
    ("", "no labeling config"),
    ("<View><Video", "not valid XML"),
    ('<View><Image name="i" value="$image"/></View>', "no <Video> tag"),
    ('<View><Video name="v" value="video"/></View>', "must name task data"),
    ('<View><Video name="v" value="$v" frameRate="fast"/></View>', "expected a number"),
])
def test_bad_label_configs(xml, message):
    with pytest.raises(ValueError, match=message):
        parse_label_config(xml)


def test_region_pointing_at_unknown_video_tag():
    with pytest.raises(ValueError, match="Video tags"):
        parse_label_config(CONFIG).video_for("other")
