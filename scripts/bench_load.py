"""N concurrent interactive /predict calls against `scribblebox serve` (gunicorn): correctness, latency, peak memory.

Starts the backend as users do (`python -m scribblebox.cli serve --workers W`, its own process group), writes a
synthetic H.264 video with known motion into a temporary media root (SCRIBBLEBOX_MEDIA_ROOTS), warms every worker,
then fires `--concurrency` calls at once. A call is correct when it answers 200 with the same region id and its last
keyframe overlaps the true box (IoU >= 0.5). Memory: RSS and PSS summed over the server's process group, sampled
from /proc every 50 ms (PSS splits the pages the forked workers share, so it is the honest total).
    .venv/bin/python scripts/bench_load.py --concurrency 20 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from scribblebox.models.geometry import iou
from scribblebox.models.synthetic import make_moving_box_video

CONFIG = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <VideoRectangle name="box" toName="video" smart="true"/>
  <Labels name="videoLabels" toName="video"><Label value="Car"/></Labels>
</View>"""
FPS = 25
SIZE = (640, 360)
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 300.0


@dataclass
class Call:
    index: int
    status: int
    seconds: float
    correct: bool
    detail: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_memory_kb(pgid: int) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, process count) over the processes of group `pgid`, in KiB; vanished processes are skipped."""
    rss = pss = count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:  # fields after "(comm)": state ppid pgrp
                continue
            fields = dict(line.split(":", 1) for line in Path(entry.path, "smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        rss += int(fields["Rss"].split()[0])
        pss += int(fields["Pss"].split()[0])
        count += 1
    return rss, pss, count


class MemorySampler(threading.Thread):
    """Peak of `group_memory_kb` while running."""

    def __init__(self, pgid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pgid, self.every_s = pgid, every_s
        self.peak_rss = self.peak_pss = self.processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss, pss, count = group_memory_kb(self.pgid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.processes = max(self.processes, count)
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def start_server(root: Path, media: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """`scribblebox serve` in its own session (the group we measure and stop); returns it once /health answers."""
    port = free_port()
    env = {**os.environ, "SCRIBBLEBOX_DATA_DIR": str(root / "data"), "SCRIBBLEBOX_MEDIA_ROOTS": str(media),
           "SCRIBBLEBOX_LOG_LEVEL": "WARNING"}
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "scribblebox.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    log = open(root / "backend.log", "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited with {proc.returncode}; log {root / 'backend.log'}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"backend did not answer {url}/health within {START_TIMEOUT_S:.0f} s")


def stop_server(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the group (gunicorn stops its workers), SIGKILL what is left after `grace_s`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def predict_body(video: Path, task_id: int, frame: int, box: np.ndarray, num_frames: int) -> dict:
    """An interactive call as Label Studio 1.23.2 sends it: one box drawn on LS frame `frame` (1-based)."""
    x, y, w, h = (float(v) for v in box)
    sx, sy = 100.0 / SIZE[0], 100.0 / SIZE[1]
    region = {"id": f"r{task_id}", "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
              "value": {"framesCount": num_frames, "duration": num_frames / FPS, "labels": ["Car"],
                        "sequence": [{"frame": frame, "x": x * sx, "y": y * sy, "width": w * sx, "height": h * sy,
                                      "rotation": 0, "enabled": True, "time": (frame - 1) / FPS}]}}
    task = {"id": task_id, "data": {"video": str(video), "fps": FPS}, "project": 1}
    return {"tasks": [task], "project": "1.1735725600", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": [region]}}}


def check_answer(reply: requests.Response, task_id: int, truth: np.ndarray) -> tuple[bool, str]:
    """200, the drawn region back (same id), and its last keyframe on the true box (IoU >= 0.5)."""
    if reply.status_code != 200:
        return False, reply.text[:200]
    (item,) = reply.json()["results"]
    (region,) = item["result"]
    seq = region["value"]["sequence"]
    if region["id"] != f"r{task_id}" or len(seq) < 1:
        return False, f"wrong region {region['id']} / {len(seq)} keyframes"
    last = seq[-1]
    box = np.array([last["x"] * SIZE[0], last["y"] * SIZE[1], last["width"] * SIZE[0], last["height"] * SIZE[1]]) / 100
    overlap = float(iou(box, truth[last["frame"] - 1]))
    return overlap >= 0.5, f"{len(seq)} keyframes, last on frame {last['frame']} IoU {overlap:.2f}"


def call(url: str, video: Path, truth: np.ndarray, index: int) -> Call:
    frame = 1 + (index % 3) * (len(truth) // 3)  # boxes drawn at the start, a third and two thirds in
    start = time.perf_counter()
    reply = requests.post(url + "/predict", json=predict_body(video, 1000 + index, frame, truth[frame - 1], len(truth)),
                          timeout=REQUEST_TIMEOUT_S)
    seconds = time.perf_counter() - start
    correct, detail = check_answer(reply, 1000 + index, truth)
    return Call(index, reply.status_code, seconds, correct, detail)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(concurrency: int, workers: int, frames: int) -> dict:
    """Start the server, warm it, fire the calls; returns the figures (and every call)."""
    with tempfile.TemporaryDirectory(prefix="scribblebox-load-") as tmp:
        root = Path(tmp)
        media = root / "media"
        video = media / "walk.mp4"
        truth = make_moving_box_video(video, num_frames=frames, size=SIZE, fps=FPS, start=(60, 80, 120, 90),
                                      velocity=(3, 1))
        proc, url = start_server(root, media, workers)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        try:
            idle_rss, idle_pss, _ = group_memory_kb(proc.pid)
            warm = [call(url, video, truth, -1 - i) for i in range(2 * workers)]  # engines built in every worker
            single = statistics.median(c.seconds for c in warm[workers:])
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                calls = list(pool.map(lambda i: call(url, video, truth, i), range(concurrency)))
            wall = time.perf_counter() - start
            metrics = [requests.get(url + "/metrics", timeout=5).json() for _ in range(2 * workers)]
        finally:
            sampler.stop()
            stop_server(proc)
    seconds = [c.seconds for c in calls]
    return {"concurrency": concurrency, "workers": workers, "frames": frames, "size": f"{SIZE[0]}x{SIZE[1]}",
            "correct": sum(c.correct for c in calls), "statuses": sorted({c.status for c in calls}),
            "warm_single_s": single, "cold_first_s": warm[0].seconds, "p50_s": percentile(seconds, 50),
            "p95_s": percentile(seconds, 95), "max_s": max(seconds), "wall_s": wall,
            "idle_rss_mb": idle_rss / 1024, "idle_pss_mb": idle_pss / 1024, "peak_rss_mb": sampler.peak_rss / 1024,
            "peak_pss_mb": sampler.peak_pss / 1024, "processes": sampler.processes,
            "worker_pids": sorted({m["pid"] for m in metrics}),
            "calls": [c.__dict__ for c in calls]}


def table(figures: dict) -> str:
    rows = [("calls correct", f"{figures['correct']}/{figures['concurrency']} (HTTP {figures['statuses']})"),
            ("gunicorn workers", f"{figures['workers']} (x4 threads), {figures['processes']} processes in the group"),
            ("video", f"{figures['frames']} frames {figures['size']} H.264"),
            ("first call, cold (s)", f"{figures['cold_first_s']:.2f}"),
            ("one call, warm, alone (s)", f"{figures['warm_single_s']:.2f}"),
            ("p50 latency under load (s)", f"{figures['p50_s']:.2f}"),
            ("p95 latency under load (s)", f"{figures['p95_s']:.2f}"),
            ("max latency (s)", f"{figures['max_s']:.2f}"),
            ("all calls done in (s)", f"{figures['wall_s']:.2f}"),
            ("idle RSS / PSS (MiB)", f"{figures['idle_rss_mb']:.0f} / {figures['idle_pss_mb']:.0f}"),
            ("peak RSS / PSS (MiB)", f"{figures['peak_rss_mb']:.0f} / {figures['peak_pss_mb']:.0f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=60, help="length of the synthetic video")
    parser.add_argument("--json", type=Path, help="also write the figures (and every call) here")
    args = parser.parse_args(argv)
    figures = run(args.concurrency, args.workers, args.frames)
    print(table(figures))
    for c in figures["calls"]:
        if not c["correct"]:
            print(f"call {c['index']}: HTTP {c['status']} {c['detail']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if figures["correct"] == figures["concurrency"] else 1


if __name__ == "__main__":
    sys.exit(main())
