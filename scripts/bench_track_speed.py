"""Seconds for one whole first track (decode + track + keyframe fit) of a 100-frame 854x480 H.264 video.

Median of --repeats runs per tracker setting, side by side with OpenCV's default CSRT parameters as the baseline:
    .venv/bin/python scripts/bench_track_speed.py --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.synthetic import make_moving_box_video
from scribblebox.models.track import Keyframe
from scribblebox.models.trackers.opencv import OpenCVTracker
from scribblebox.models.video import open_video

START = (100, 120, 140, 100)


class DefaultCSRT(OpenCVTracker):
    """The baseline: CSRT with OpenCV's default parameters."""

    def _create(self) -> cv2.Tracker:
        return cv2.TrackerCSRT_create()


def time_track(path: Path, engine: CurveVOT, repeats: int) -> tuple[float, list[float], int]:
    runs, keyframes = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        with open_video(path) as video:
            result = engine.track(video, [Keyframe.of(0, START)])
        runs.append(time.perf_counter() - start)
        keyframes = len(result.keyframes)
    return statistics.median(runs), runs, keyframes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        make_moving_box_video(path, num_frames=100, size=(854, 480), start=START, velocity=(5, 1.5))
        baseline = CurveVOT()
        baseline.factory = lambda: DefaultCSRT("csrt")
        rows = [("csrt, OpenCV defaults (baseline)", baseline), ("csrt (shipped)", CurveVOT()), ("kcf", CurveVOT(tracker="kcf"))]
        print(f"{'engine':34s} {'median s':>9s}  runs")
        for name, engine in rows:
            median, runs, _ = time_track(path, engine, args.repeats)
            print(f"{name:34s} {median:9.2f}  {' '.join(f'{r:.2f}' for r in runs)}", flush=True)


if __name__ == "__main__":
    main()
