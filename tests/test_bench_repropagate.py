"""scripts/bench_repropagate.py: each timed run opens the video afresh, as a server call does, and a video file's
decoding work is reported."""
from __future__ import annotations

import json

from repo_scripts import DAVIS, load_script, needs_davis


def test_missing_data_is_a_clear_exit_code(tmp_path, capsys) -> None:
    assert load_script("bench_repropagate").main(["--data", str(tmp_path), "--repeats", "1"]) == 2
    assert "no such folder" in capsys.readouterr().err


@needs_davis
def test_a_short_h264_run_reports_time_quality_and_decoding(tmp_path, capsys) -> None:
    out = tmp_path / "figures.json"
    script = load_script("bench_repropagate")
    assert script.main(["--data", str(DAVIS), "--frames", "12", "--repeats", "1", "--h264", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["frames"] == 12 and figures["masks_returned"] == 12 and figures["correction_kept"]
    assert 11 <= figures["frames_decoded"] <= 6 * 12  # the clip but frame 0 (decoded at opening), never a cache from before
    assert figures["quality"]["after_correction"]["jf"] > 0.3
    assert "frames decoded per run" in capsys.readouterr().out
