"""Draw docs/curvevot.png for the README: one box in, a dense track and its few keyframes out.

Uses a synthetic scene (models/synthetic.py), so the figure can be rebuilt anywhere:
    .venv/bin/python scripts/readme_figure.py docs/curvevot.png
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from scribblebox.models.curvevot import CurveVOT
from scribblebox.models.synthetic import MovingBoxScene, moving_box_scene
from scribblebox.models.track import Keyframe, render_keyframes
from scribblebox.models.video import ArrayVideo

N = 90
GREEN, RED, BLUE, GREY = (80, 200, 60), (40, 40, 230), (230, 120, 30), (150, 150, 150)


def scene() -> MovingBoxScene:
    base = moving_box_scene(num_frames=N, size=(480, 300), start=(40, 60, 70, 55), velocity=(0, 0), seed=3)
    t = np.arange(N)
    boxes = np.stack([40 + 3.8 * t, 130 + 80 * np.sin(t / 12), 70 + 0.3 * t, 55 + 0.2 * t], 1)
    return MovingBoxScene(base.background, base.texture, boxes)


def rect(img: np.ndarray, box, color, thick: int = 2) -> None:
    x, y, w, h = (int(round(v)) for v in box)
    cv2.rectangle(img, (x, y), (x + w, y + h), color, thick)


def main(out: str) -> None:
    s = scene()
    video = ArrayVideo(np.stack(list(s.frames())))
    result = CurveVOT().track(video, [Keyframe.of(0, s.boxes[0])])
    shown = render_keyframes(result.keyframes, N)
    thumbs = []
    for f in (0, 30, 60, 89):
        img = video.frame(f).copy()
        rect(img, result.boxes[f], GREEN, 1)
        rect(img, shown[f], RED, 2)
        cv2.putText(img, f"frame {f}", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        thumbs.append(cv2.resize(img, (320, 200)))
    strip = np.concatenate(thumbs, axis=1)
    plot = np.full((260, strip.shape[1], 3), 255, np.uint8)
    cy_true, cy_dense, cy_shown = (b[:, 1] + b[:, 3] / 2 for b in (s.boxes, result.boxes, shown))
    lo, hi = cy_true.min() - 10, cy_true.max() + 10

    def pt(f: float, v: float) -> tuple[int, int]:
        return int(40 + f / (N - 1) * (plot.shape[1] - 60)), int(30 + (v - lo) / (hi - lo) * 200)

    for series, color, thick in ((cy_true, GREY, 4), (cy_dense, GREEN, 1), (cy_shown, RED, 2)):
        cv2.polylines(plot, [np.array([pt(f, v) for f, v in enumerate(series)], np.int32)], False, color, thick)
    for kf in result.keyframes:
        cv2.circle(plot, pt(kf.frame, kf.box[1] + kf.box[3] / 2), 6, BLUE if kf.frame else RED, -1)
    legend = f"one box on frame 0 -> {N}-frame track as {len(result.keyframes)} keyframes (dots)"
    cv2.putText(plot, legend, (40, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    cv2.putText(plot, "grey: true centre y   green: tracker (dense)   red: what Label Studio/CVAT draw from the keyframes",
                (40, 250), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(out, np.concatenate([strip, plot], axis=0))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/curvevot.png")
