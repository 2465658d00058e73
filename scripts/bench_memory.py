"""Peak memory of `scribblebox serve` (gunicorn) against video length (issue #6: frames are streamed, not held).

For each length (default 100, 300, 1000 frames of a 640x360 synthetic H.264 video, made with
`models.synthetic.make_moving_box_video`), a fresh backend serves one interactive box track (boxes drawn on the
first and the last frame) and then one interactive mask call (a click on frame 1 of the same object, with the
video_masks.xml labeling config: masks on every frame). PSS summed over the server's process group is sampled every
50 ms (scripts/bench_load.py); its peak is reported per phase: idle, box track, mask call. Growth with length in one
phase and not the other tells which path holds per-frame data.

By default the server computes the WHOLE video in the call (server.window_frames and server.predict_deadline_s
raised through a SCRIBBLEBOX_CONFIG file): the work a long video's background `complete` job does. --shipped keeps
the shipped settings (on long videos only a window is computed in the call).
    .venv/bin/python scripts/bench_memory.py --lengths 100,300,1000 [--shipped] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import requests

from bench_load import MemorySampler, group_memory_kb, start_server, stop_server  # scripts/ is on sys.path
from scribblebox.models.synthetic import make_moving_box_video
from scribblebox.settings import ServerSettings

CONFIG = resources.files("scribblebox.config").joinpath("label_studio/video_masks.xml").read_text()
SIZE = (640, 360)
FPS = 25
START = (60, 80, 120, 90)
VELOCITY = (0.44, 0.2)  # slow enough that the object stays in frame for 1000 frames
LABEL = "Person"
TIMEOUT_S = 600.0


def body(video: Path, frames: int, context: list[dict]) -> dict:
    """A /predict call as Label Studio 1.23.2 sends it for the mask labeling config (task 1, no saved annotation)."""
    data = {"video": str(video), "fps": FPS, "frames": [f"/data/upload/1/f{i}.jpg" for i in range(frames)]}
    task = {"id": 1, "data": data, "project": 1, "annotations": [], "drafts": [], "predictions": []}
    return {"tasks": [task], "project": "1.1735725600", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": context}}}


def box_region(truth: np.ndarray) -> dict:
    """The object's box drawn on the first and the last frame (so the track spans the whole video even where the
    tracker alone would call the object lost)."""
    sx, sy = 100.0 / SIZE[0], 100.0 / SIZE[1]
    frames = len(truth)

    def keyframe(frame: int) -> dict:
        x, y, w, h = (float(v) for v in truth[frame - 1])
        return {"frame": frame, "x": x * sx, "y": y * sy, "width": w * sx, "height": h * sy, "rotation": 0,
                "enabled": True, "time": (frame - 1) / FPS}

    return {"id": "box1", "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": frames, "duration": frames / FPS, "labels": [LABEL],
                      "sequence": [keyframe(1), keyframe(frames)]}}


def click(box: np.ndarray) -> dict:
    x, y, w, h = (float(v) for v in box)
    return {"id": "k1", "from_name": "clicks", "to_name": "frames", "type": "keypointlabels", "origin": "manual",
            "original_width": SIZE[0], "original_height": SIZE[1], "image_rotation": 0, "item_index": 0,
            "is_positive": True, "value": {"x": (x + w / 2) * 100 / SIZE[0], "y": (y + h / 2) * 100 / SIZE[1],
                                           "width": 0.6, "keypointlabels": [LABEL]}}


def phase(url: str, pgid: int, payload: dict) -> tuple[requests.Response, float, float, float]:
    """One call with its own sampler: (reply, seconds, peak PSS MiB, peak RSS MiB)."""
    sampler = MemorySampler(pgid)
    sampler.start()
    start = time.perf_counter()
    try:
        reply = requests.post(url + "/predict", json=payload, timeout=TIMEOUT_S)
    finally:
        seconds = time.perf_counter() - start
        sampler.stop()
    return reply, seconds, sampler.peak_pss / 1024, sampler.peak_rss / 1024


def whole_video_config(root: Path) -> Path | None:
    """A settings file that makes an interactive call compute the whole video (None if this version has no windows)."""
    known = {f.name for f in dataclasses.fields(ServerSettings)}
    server = {k: v for k, v in (("window_frames", 10**7), ("predict_deadline_s", 3600.0)) if k in known}
    if not server:
        return None
    path = root / "whole-video.yaml"
    path.write_text(json.dumps({"server": server}))  # JSON is YAML
    return path


def measure(frames: int, workers: int, shipped: bool) -> dict:
    """A fresh server per length, so no peak carries over from a longer video."""
    with tempfile.TemporaryDirectory(prefix="scribblebox-memory-") as tmp:
        root = Path(tmp)
        config = None if shipped else whole_video_config(root)
        os.environ.pop("SCRIBBLEBOX_CONFIG", None)
        if config is not None:
            os.environ["SCRIBBLEBOX_CONFIG"] = str(config)  # start_server passes os.environ on
        video = root / "media" / "walk.mp4"
        truth = make_moving_box_video(video, num_frames=frames, size=SIZE, fps=FPS, start=START, velocity=VELOCITY)
        proc, url = start_server(root, root / "media", workers)
        try:
            time.sleep(1.0)
            _, idle_pss, _ = group_memory_kb(proc.pid)
            box_call = body(video, frames, [box_region(truth)])
            box_reply, box_s, box_pss, box_rss = phase(url, proc.pid, box_call)
            mask_reply, mask_s, mask_pss, mask_rss = phase(url, proc.pid, body(video, frames, [click(truth[0])]))
        finally:
            stop_server(proc)
            os.environ.pop("SCRIBBLEBOX_CONFIG", None)
    for name, reply in (("box", box_reply), ("mask", mask_reply)):
        if reply.status_code != 200:
            raise RuntimeError(f"{frames} frames: the {name} call answered {reply.status_code}: {reply.text[:300]}")
    (region,) = box_reply.json()["results"][0]["result"]
    masks = [r for r in mask_reply.json()["results"][0]["result"] if r["type"] == "brushlabels"]
    return {"frames": frames, "size": f"{SIZE[0]}x{SIZE[1]}", "workers": workers, "whole_video": config is not None,
            "video_mb": video_size_mb(frames),
            "idle_pss_mb": idle_pss / 1024, "box_s": box_s, "box_peak_pss_mb": box_pss, "box_peak_rss_mb": box_rss,
            "box_keyframes": len(region["value"]["sequence"]), "mask_s": mask_s, "mask_peak_pss_mb": mask_pss,
            "mask_peak_rss_mb": mask_rss, "mask_frames_answered": len(masks),
            "mask_reply_mb": len(mask_reply.content) / 2**20}


def video_size_mb(frames: int) -> float:
    """Raw decoded size of the whole video (what holding every frame would cost)."""
    return frames * SIZE[0] * SIZE[1] * 3 / 2**20


def slope(rows: list[dict], key: str) -> float:
    """MiB per 100 frames, least squares over the lengths."""
    if len(rows) < 2:
        return float("nan")
    x = np.array([r["frames"] for r in rows], float)
    y = np.array([r[key] for r in rows], float)
    return float(np.polyfit(x, y, 1)[0] * 100)


def table(rows: list[dict]) -> str:
    head = (f"| {'frames':>6} | {'decoded video MiB':>17} | {'idle PSS':>8} | {'box: peak PSS':>13} | {'box s':>6} | "
            f"{'mask: peak PSS':>14} | {'mask s':>6} | {'masks':>5} | {'reply MiB':>9} |")
    mode = "whole video per call" if rows[0]["whole_video"] else "shipped settings"
    rule = "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"
    lines = [f"{mode}, {rows[0]['size']} H.264, {rows[0]['workers']} gunicorn workers", head, rule]
    for r in rows:
        lines.append(f"| {r['frames']:>6} | {r['video_mb']:>17.0f} | {r['idle_pss_mb']:>8.0f} | "
                     f"{r['box_peak_pss_mb']:>13.0f} | {r['box_s']:>6.1f} | {r['mask_peak_pss_mb']:>14.0f} | "
                     f"{r['mask_s']:>6.1f} | {r['mask_frames_answered']:>5} | {r['mask_reply_mb']:>9.1f} |")
    lines.append(f"growth per 100 frames (MiB PSS, least squares): box track {slope(rows, 'box_peak_pss_mb'):+.1f}, "
                 f"mask call {slope(rows, 'mask_peak_pss_mb'):+.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="100,300,1000", help="comma-separated video lengths in frames")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shipped", action="store_true", help="shipped settings (long videos: a window per call)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
    if not lengths or min(lengths) < 2:
        parser.error("--lengths must list video lengths of at least 2 frames")
    rows = []
    for frames in lengths:
        rows.append(measure(frames, args.workers, args.shipped))
        print(f"{frames} frames done: box {rows[-1]['box_s']:.1f} s, mask {rows[-1]['mask_s']:.1f} s", file=sys.stderr,
              flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
