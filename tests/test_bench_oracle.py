"""scripts/bench_oracle.py: the engine given perfect masks on k evenly spaced frames (what limits J&F)."""
from __future__ import annotations

import json

from repo_scripts import load_script, needs_davis


def test_frames_are_the_middles_of_equal_parts() -> None:
    spread = load_script("bench_oracle").spread
    assert spread(80, 4) == [10, 30, 50, 70]
    assert spread(3, 8) == [0, 1, 2]  # more frames asked than the video has: each frame once


def test_missing_data_is_a_clear_exit_code(tmp_path, capsys) -> None:
    assert load_script("bench_oracle").main(["--root", str(tmp_path / "nothing")]) == 2
    assert "no DAVIS-format data" in capsys.readouterr().err


@needs_davis
def test_perfect_frames_beat_the_box_track_alone(tmp_path) -> None:
    out = tmp_path / "oracle.json"
    assert load_script("bench_oracle").main(["--sequences", "dog-agility", "--frames", "2,6", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["sequences"]
    assert row["frames"] == 25
    assert row["gt6"] > row["gt2"] > row["r0"]
