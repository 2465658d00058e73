"""CLI commands that run the engine on local files (no platform involved)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from typing import TextIO

from .models.curvevot import CurveVOT
from .models.track import Keyframe
from .models.video import open_video
from .settings import Settings

log = logging.getLogger(__name__)


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--box must be x,y,w,h in pixels (four numbers), got {text!r}") from None
    return x, y, w, h


class TextBar:
    """A progress bar redrawn in place on one line of `stream` (stderr): ``[#######-----------]  35% tracking``.
    Plain text, so it needs no dependency and reads fine in a log file too."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.last = ""

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        filled = int(round(fraction * self.width))
        line = f"[{'#' * filled}{'-' * (self.width - filled)}] {round(fraction * 100):3d}% {message[:60]}"
        if line == self.last:
            return
        self.stream.write("\r" + line.ljust(len(self.last)) + ("\n" if fraction >= 1.0 else ""))
        self.stream.flush()
        self.last = "" if fraction >= 1.0 else line


def progress_bar(args: argparse.Namespace) -> TextBar | None:
    """A bar on stderr when asked for (--progress) or when stderr is a terminal."""
    wanted = getattr(args, "progress", False) or sys.stderr.isatty()
    return TextBar(sys.stderr) if wanted else None


def track_command(settings: Settings, args: argparse.Namespace) -> int:
    """`scribblebox track VIDEO --box x,y,w,h [--frame N] [--progress]`: keyframes and dense track as JSON."""
    tracking = settings.tracking
    if args.tracker:
        tracking = replace(tracking, tracker=args.tracker)
    if args.tolerance:
        tracking = replace(tracking, tolerance=args.tolerance)
    engine = CurveVOT.from_settings(tracking)
    video = open_video(args.video)
    started = time.perf_counter()
    result = engine.track(video, [Keyframe.of(args.frame, parse_box(args.box))], progress=progress_bar(args))
    seconds = time.perf_counter() - started
    out = {
        "video": str(args.video),
        "frames": video.num_frames,
        "fps": video.fps,
        "width": video.width,
        "height": video.height,
        "variable_frame_rate": bool(video.variable_frame_rate),
        "tracker": tracking.tracker,
        "seconds": round(seconds, 3),
        "keyframes": [{"frame": k.frame, "box": [round(v, 2) for v in k.box], "enabled": k.enabled} for k in result.keyframes],
        "review": result.review,
        "track": [None if b[0] != b[0] else [round(float(v), 2) for v in b] for b in result.boxes],
        "scores": [round(float(s), 3) for s in result.scores],
    }
    if video.variable_frame_rate:
        log.warning("%s has a variable frame rate: platform frame numbers may not match decoded frames", args.video)
    text = json.dumps(out, indent=1)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
        log.info("%d keyframes for %d frames in %.2fs -> %s", len(result.keyframes), video.num_frames, seconds, args.output)
    else:
        sys.stdout.write(text + "\n")
    return 0
