"""PNG line plot of J&F versus interaction rounds, drawn with OpenCV so evaluation needs no plotting library."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 960, 600
LEFT, RIGHT, TOP, BOTTOM = 70, 230, 50, 60  # plot margins; the legend sits in the right one
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY = (0, 0, 0), (205, 205, 205)


def _palette(n: int) -> list[tuple[int, int, int]]:
    """n distinguishable BGR colours (evenly spaced hues, darkened so they read on white)."""
    hues = np.linspace(0, 179, max(n, 1), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 190)], axis=-1)[None]
    return [tuple(int(c) for c in bgr) for bgr in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]]


def plot_rounds(curves: dict[str, list[float]], mean: list[float], path: str | Path,
                title: str = "J&F per round") -> None:
    """One thin line per sequence, the mean as a thick black line; y from the lowest value (rounded down) to 1."""
    values = [v for c in [*curves.values(), mean] for v in c]
    if not values:
        raise ValueError("nothing to plot: no sequence has a J&F value")
    rounds = max(len(c) for c in [*curves.values(), mean])
    y_lo = min(0.9, np.floor(min(values) * 10) / 10)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP

    def at(r: int, v: float) -> tuple[int, int]:
        x = x0 + (x1 - x0) * (r / max(rounds - 1, 1))
        y = y0 - (y0 - y1) * (v - y_lo) / (1 - y_lo)
        return int(round(x)), int(round(y))

    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    for tick in np.arange(y_lo, 1.0001, 0.1 if 1 - y_lo > 0.3 else 0.05):
        cv2.line(img, at(0, tick), at(rounds - 1, tick), GREY, 1)
        cv2.putText(img, f"{tick:.2f}", (x0 - 55, at(0, tick)[1] + 5), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    for r in range(rounds):
        cv2.putText(img, str(r), (at(r, y_lo)[0] - 5, y0 + 20), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y1), (x1, y0), BLACK, 1)
    cv2.putText(img, "round (0: box track only)", ((x0 + x1) // 2 - 100, y0 + 45), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, y1 - 18), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    legend = list(zip(curves.items(), _palette(len(curves)))) + [(("mean", mean), BLACK)]
    step = min(20.0, (y0 - y1 - 10) / len(legend))  # a long legend packs tighter instead of running off
    for i, ((name, curve), colour) in enumerate(legend):
        thick = 3 if name == "mean" else 1
        points = [at(r, v) for r, v in enumerate(curve)]
        for a, b in zip(points, points[1:]):
            cv2.line(img, a, b, colour, thick, cv2.LINE_AA)
        for p in points:
            cv2.circle(img, p, thick + 1, colour, -1, cv2.LINE_AA)
        y = int(y1 + 10 + step * i)
        cv2.line(img, (x1 + 15, y), (x1 + 40, y), colour, thick, cv2.LINE_AA)
        cv2.putText(img, name[:22], (x1 + 48, y + 5), FONT, 0.45, colour, 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):
        raise ValueError(f"cannot write the plot to {path}: give a writable path ending in .png")
