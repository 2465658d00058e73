"""CSRT parameter sweep on DAVIS (first 60 frames of 6 sequences, frames at 480 px long side, as the engine sees them).

Prints ms/frame and the mean IoU of the raw tracker against the true boxes, to justify `models/trackers/opencv.py`:
    .venv/bin/python scripts/bench_csrt_params.py ../shared/data/davis2016-train
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from scribblebox.models.geometry import iou, mask_to_box

SEQUENCES = ["bus", "hike", "hockey", "car-turn", "kite-walk", "mallard-water"]


def load(root: Path, name: str, n: int = 60, side: int = 480):
    frames = sorted((root / name / "frames").glob("*.jpg"))[:n]
    masks = sorted((root / name / "masks").glob("*.png"))[:n]
    first = cv2.imread(str(frames[0]))
    s = side / max(first.shape[:2])
    images = [cv2.resize(cv2.imread(str(f)), None, fx=s, fy=s, interpolation=cv2.INTER_AREA) for f in frames]
    boxes = np.array([mask_to_box(cv2.imread(str(m), 0) > 127) for m in masks]) * s
    return images, boxes


def run(data, params: cv2.TrackerCSRT_Params) -> tuple[float, float]:
    seconds, frames, ious = 0.0, 0, []
    for images, truth in data:
        tracker = cv2.TrackerCSRT_create(params)
        tracker.init(images[0], tuple(int(v) for v in truth[0]))
        out = []
        start = time.perf_counter()
        for image in images[1:]:
            ok, rect = tracker.update(image)
            out.append(rect if ok else (0, 0, 0, 0))
        seconds += time.perf_counter() - start
        frames += len(images) - 1
        ious.append(iou(np.array(out, float), truth[1:]).mean())
    return 1000 * seconds / frames, float(np.mean(ious))


def main(root: str) -> None:
    cv2.setNumThreads(2)
    data = [load(Path(root), name) for name in SEQUENCES]
    print("template_size number_of_scales use_segmentation  ms/frame  mean IoU")
    for size in (200, 128):
        for scales in (33, 17):
            for segmentation in (True, False):
                p = cv2.TrackerCSRT_Params()
                p.template_size, p.number_of_scales, p.use_segmentation = size, scales, segmentation
                ms, mean_iou = run(data, p)
                print(f"{size:13d} {scales:16d} {str(segmentation):16s} {ms:9.1f} {mean_iou:9.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
