"""The `scribblebox` command as a user runs it."""
import json
import subprocess
import sys

import numpy as np
import pytest

from scribblebox.cli import main
from scribblebox.models.geometry import iou
from scribblebox.models.synthetic import make_moving_box_video
from scribblebox.models.track import Keyframe, render_keyframes


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "clip.mp4"
    boxes = make_moving_box_video(path, num_frames=40, size=(480, 320), start=(40, 60, 80, 60), velocity=(4, 1))
    return path, boxes


def test_track_writes_keyframes_and_the_dense_track(clip, tmp_path):
    path, boxes = clip
    out = tmp_path / "track.json"
    box = ",".join(str(v) for v in boxes[0])
    assert main(["track", str(path), "--box", box, "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["frames"] == 40 and len(data["track"]) == 40
    keyframes = [Keyframe.of(k["frame"], k["box"], k["enabled"]) for k in data["keyframes"]]
    assert 2 <= len(keyframes) <= 6
    assert iou(render_keyframes(keyframes, 40), boxes).mean() > 0.8
    assert iou(np.array(data["track"], float), boxes).mean() > 0.8


def test_track_from_a_later_frame_on_stdout(clip, capsys):
    path, boxes = clip
    box = ",".join(str(v) for v in boxes[20])
    assert main(["track", str(path), "--box", box, "--frame", "20", "--tracker", "kcf"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tracker"] == "kcf" and data["keyframes"][0]["frame"] < 20


@pytest.mark.parametrize("args, message", [
    (["--box", "1,2,3"], "four numbers"),
    (["--box", "5000,10,20,20"], "outside the 480x320 frame"),
    (["--box", "10,10,20,20", "--frame", "99"], "outside the video"),
    (["--box", "10,10,20,20", "--tracker", "nope"], "unknown tracker"),
])
def test_bad_input_is_a_message_and_a_non_zero_exit(clip, args, message):
    path, _ = clip
    done = subprocess.run([sys.executable, "-m", "scribblebox.cli", "track", str(path), *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_missing_video_is_a_clear_error(tmp_path, capsys):
    assert main(["track", str(tmp_path / "nope.mp4"), "--box", "1,2,3,4"]) == 2
    assert "nope.mp4" in capsys.readouterr().err
