"""scripts/bench_long_tracks.py: box tracks on DAVIS sequences looped to hundreds of frames."""
from __future__ import annotations

import json

from repo_scripts import load_script, needs_davis


def test_ping_pong_turns_without_showing_a_frame_twice() -> None:
    ping_pong = load_script("bench_long_tracks").ping_pong
    assert ping_pong(4, 11) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]
    assert ping_pong(1, 3) == [0, 0, 0]


def test_looped_sequence_pairs_frames_with_their_masks(tmp_path) -> None:
    source = tmp_path / "src"
    for kind, suffix in (("frames", ".jpg"), ("masks", ".png")):
        (source / kind).mkdir(parents=True)
        for i in range(3):
            (source / kind / f"{i:05d}{suffix}").write_text(f"{kind}{i}")
    assert load_script("bench_long_tracks").loop_sequence(source, tmp_path / "long", 6)
    frames = sorted((tmp_path / "long" / "frames").iterdir())
    masks = sorted((tmp_path / "long" / "masks").iterdir())
    assert [f.read_text() for f in frames] == ["frames0", "frames1", "frames2", "frames1", "frames0", "frames1"]
    assert [m.read_text()[5:] for m in masks] == [f.read_text()[6:] for f in frames]
    (source / "masks" / "00002.png").unlink()
    assert not load_script("bench_long_tracks").loop_sequence(source, tmp_path / "other", 6)


def test_missing_data_is_a_clear_exit_code(tmp_path, capsys) -> None:
    assert load_script("bench_long_tracks").main(["--data", str(tmp_path / "nothing")]) == 2
    assert "no DAVIS-format data" in capsys.readouterr().err


@needs_davis
def test_a_looped_sequence_is_benchmarked(tmp_path) -> None:
    out = tmp_path / "long.json"
    assert load_script("bench_long_tracks").main(["--sequences", "flamingo", "--frames", "120", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["sequences"]
    assert row["frames"] == 120 and row["visible"] == 120
    assert row["methods"]["curvevot"]["iou_final"] >= 0.7
