"""Interactive segmentation of one frame: the object's box + scribbles (+ the current mask) -> mask, with GrabCut.

Work happens in a crop around the box (enlarged by `margin`), resized so its long side is `work_size`: the cost of a
frame does not depend on the video's resolution, and every object is seen at the same scale. The crop geometry
(`Window`) and stroke rasterisation live here because the propagators work in the same crops.

The user's strokes are hard constraints inside GrabCut, and are enforced again on the full-resolution result: a
positive stroke always ends inside the mask and a negative one outside (a later stroke wins where two overlap).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .masks import Scribble

log = logging.getLogger(__name__)

MIN_SAMPLES = 16  # GrabCut's colour models need this many pixels of each class (5 Gaussians each)


@dataclass(frozen=True)
class Window:
    """A frame rectangle [x0, x1) x [y0, y1) and the working image it is resized to (w, h)."""

    x0: int
    y0: int
    x1: int
    y1: int
    w: int
    h: int

    @property
    def sx(self) -> float:
        return self.w / (self.x1 - self.x0)

    @property
    def sy(self) -> float:
        return self.h / (self.y1 - self.y0)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The rectangle of `image` (frame sized, any channels/dtype) resized to the working size."""
        part = image[self.y0:self.y1, self.x0:self.x1]
        shrink = self.w < self.x1 - self.x0
        return cv2.resize(part, (self.w, self.h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def take(self, mask: np.ndarray) -> np.ndarray:
        """A full-frame mask as a float32 soft mask in this window."""
        return self.crop(np.asarray(mask, dtype=np.float32))

    def to_work(self, points: np.ndarray) -> np.ndarray:
        """Frame pixel coordinates (pixel centres on integers) -> working pixel coordinates."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack([(p[:, 0] - self.x0 + 0.5) * self.sx - 0.5, (p[:, 1] - self.y0 + 0.5) * self.sy - 0.5], 1)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack([(p[:, 0] + 0.5) / self.sx - 0.5 + self.x0, (p[:, 1] + 0.5) / self.sy - 0.5 + self.y0], 1)

    def box_rect(self, box: np.ndarray, grow: float = 0.0) -> tuple[int, int, int, int]:
        """A frame box (x, y, w, h), grown by `grow` of its size on each side, as working x0, y0, x1, y1 (clipped)."""
        x, y, w, h = (float(v) for v in box)
        x, y, w, h = x - grow * w, y - grow * h, w * (1 + 2 * grow), h * (1 + 2 * grow)
        a = self.to_work([[x - 0.5, y - 0.5], [x + w - 0.5, y + h - 0.5]])
        x0, y0 = (int(np.clip(np.floor(v + 0.5), 0, n)) for v, n in zip(a[0], (self.w, self.h)))
        x1, y1 = (int(np.clip(np.ceil(v + 0.5), 0, n)) for v, n in zip(a[1], (self.w, self.h)))
        return x0, y0, x1, y1

    def convert(self, soft: np.ndarray, other: Window) -> np.ndarray:
        """A soft mask of this window resampled into `other` (zero where this window does not reach)."""
        ax, ay = self.sx / other.sx, self.sy / other.sy
        bx = (other.x0 - self.x0 + 0.5 / other.sx) * self.sx - 0.5
        by = (other.y0 - self.y0 + 0.5 / other.sy) * self.sy - 0.5
        m = np.array([[ax, 0, bx], [0, ay, by]], dtype=np.float64)
        return cv2.warpAffine(soft, m, (other.w, other.h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def paste(self, soft: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
        """A working soft mask -> full-frame bool mask (bilinear upsampling, so edges are not blocky)."""
        out = np.zeros(shape[:2], dtype=bool)
        size = (self.x1 - self.x0, self.y1 - self.y0)
        up = cv2.resize(np.asarray(soft, dtype=np.float32), size, interpolation=cv2.INTER_LINEAR)
        out[self.y0:self.y1, self.x0:self.x1] = up > threshold
        return out


def valid_box(box: np.ndarray | None) -> bool:
    return box is not None and bool(np.all(np.isfinite(box))) and box[2] > 0 and box[3] > 0


def window_for(boxes: Sequence[np.ndarray], width: int, height: int, work_size: int, margin: float) -> Window:
    """The crop around one box (or the union of several), enlarged by `margin` of each box's size per side."""
    rects = []
    for box in boxes:
        x, y, w, h = (float(v) for v in box)
        rects.append((x - margin * w, y - margin * h, x + w * (1 + margin), y + h * (1 + margin)))
    r = np.asarray(rects)
    x0, y0 = int(np.clip(np.floor(r[:, 0].min()), 0, width - 1)), int(np.clip(np.floor(r[:, 1].min()), 0, height - 1))
    x1 = int(np.clip(np.ceil(r[:, 2].max()), x0 + 1, width))
    y1 = int(np.clip(np.ceil(r[:, 3].max()), y0 + 1, height))
    scale = work_size / max(x1 - x0, y1 - y0)
    return Window(x0, y0, x1, y1, max(round((x1 - x0) * scale), 1), max(round((y1 - y0) * scale), 1))


def draw_stroke(canvas: np.ndarray, points: np.ndarray, radius: float, value: int) -> None:
    """Rasterise a polyline (or a single point) of half-width `radius` into `canvas`, in place."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return
    thickness = max(round(2 * radius) + 1, 1)
    ipts = np.round(pts).astype(np.int32)
    if len(ipts) == 1 or np.all(ipts == ipts[0]):
        cv2.circle(canvas, tuple(int(v) for v in ipts[0]), max(round(radius), 0), value, -1)
    else:
        cv2.polylines(canvas, [ipts.reshape(-1, 1, 2)], False, value, thickness, lineType=cv2.LINE_8)


def stroke_map(scribbles: Sequence[Scribble], window: Window, scale_radius: float = 1.0) -> np.ndarray:
    """int8 map of the window: +1 positive stroke, -1 negative, 0 none (later strokes drawn over earlier)."""
    out = np.zeros((window.h, window.w), dtype=np.int8)
    for s in scribbles:
        radius = max(s.radius * scale_radius * min(window.sx, window.sy), 0.5)
        draw_stroke(out, window.to_work(s.points), radius, 1 if s.positive else -1)
    return out


def enforce_strokes(mask: np.ndarray, scribbles: Sequence[Scribble], keep_fraction: float = 0.1) -> np.ndarray:
    """Positive strokes inside, negative outside (at full resolution), then drop the small pieces that no positive
    stroke touches: fragments under `keep_fraction` of the largest piece are GrabCut noise, not the object."""
    out = np.asarray(mask, dtype=bool).copy()
    strokes = np.zeros(out.shape, dtype=np.int8)
    for s in scribbles:
        draw_stroke(strokes, s.points, s.radius, 1 if s.positive else -1)
    out |= strokes > 0
    out &= strokes >= 0
    return keep_components(out, strokes > 0, keep_fraction)


def satisfies(mask: np.ndarray, scribbles: Sequence[Scribble]) -> bool:
    """True when every positive stroke lies inside `mask` and every negative one outside (as drawn, full frame)."""
    strokes = np.zeros(mask.shape[:2], dtype=np.int8)
    for s in scribbles:
        draw_stroke(strokes, s.points, s.radius, 1 if s.positive else -1)
    return bool(np.all(mask[strokes > 0]) and not np.any(mask[strokes < 0]))


def keep_components(mask: np.ndarray, anchors: np.ndarray | None, keep_fraction: float) -> np.ndarray:
    """The 8-connected pieces of `mask` that touch `anchors` or reach `keep_fraction` of the largest piece's area."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask[y0:y1, x0:x1].astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= keep_fraction * areas.max()])
    if anchors is not None:
        keep[np.unique(labels[anchors[y0:y1, x0:x1] & (labels > 0)])] = True
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = keep[labels]
    return out


Models = tuple[np.ndarray, np.ndarray]  # GrabCut's background and foreground colour GMMs, (1, 65) float64 each


def grabcut(image: np.ndarray, labels: np.ndarray, iterations: int, models: Models | None = None,
            ) -> tuple[np.ndarray | None, Models | None]:
    """GrabCut from a label map (GC_* values) -> (foreground, colour models); (None, models) when a class lacks
    samples. With `models` (e.g. from the previous frame) k-means is skipped: they are only re-fitted, which is
    twice as fast and keeps the colours stable along a video. Seeded, so results repeat."""
    fg = np.count_nonzero((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
    if fg < MIN_SAMPLES or labels.size - fg < MIN_SAMPLES:
        return None, models
    if not np.any((labels == cv2.GC_PR_FGD) | (labels == cv2.GC_PR_BGD)):
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), models
    out = labels.copy()
    if models is None:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        mode = cv2.GC_INIT_WITH_MASK
    else:
        bgd, fgd = models[0].copy(), models[1].copy()
        mode = cv2.GC_EVAL
    cv2.setRNGSeed(0)  # k-means initialisation of the colour models; per thread in OpenCV
    cv2.grabCut(image, out, None, bgd, fgd, iterations, mode)
    return (out == cv2.GC_FGD) | (out == cv2.GC_PR_FGD), (bgd, fgd)


def colour_models(image: np.ndarray, mask: np.ndarray) -> Models | None:
    """GrabCut colour models of an image split by a bool mask (k-means only); None if a side is nearly empty."""
    fg = np.count_nonzero(mask)
    if fg < MIN_SAMPLES or mask.size - fg < MIN_SAMPLES:
        return None
    labels = np.where(mask, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(image, labels, None, bgd, fgd, 0, cv2.GC_INIT_WITH_MASK)
    return bgd, fgd


def correction_zone(inside: np.ndarray, scribbles: Sequence[Scribble], window: Window, local: float,
                    reach: float) -> np.ndarray:
    """Where strokes may change a prior mask (`inside`, working size): around each stroke, within `local` x the crop
    size or `reach` x the stroke's deepest distance to the prior's boundary, whichever is larger, so a stroke drawn
    along the middle of a large wrong region frees the whole region."""
    size = max(inside.shape)
    free = np.zeros(inside.shape, dtype=bool)
    inside8 = inside.astype(np.uint8)
    depth_in = cv2.distanceTransform(inside8, cv2.DIST_L2, 3)
    depth_out = cv2.distanceTransform(1 - inside8, cv2.DIST_L2, 3)
    for s in scribbles:
        stroke = stroke_map([s], window) != 0
        if not stroke.any():
            continue
        depth = min(float((depth_out if s.positive else depth_in)[stroke].max()), size)  # no boundary: "infinite"
        free |= cv2.distanceTransform((~stroke).astype(np.uint8), cv2.DIST_L2, 3) <= max(local * size, reach * depth)
    return free


def keep_outside_zone(labels: np.ndarray, inside: np.ndarray, add: np.ndarray, cut: np.ndarray, band: int) -> None:
    """The prior becomes hard labels, except a band of `band` pixels along its boundary: its inside where no negative
    stroke frees it (`cut`), its outside where no positive stroke does (`add`). So a positive stroke only grows the
    mask and a negative one only shrinks it: fixing a missed leg never drops the correct rider above it."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    inside8 = inside.astype(np.uint8)
    labels[~cut & (cv2.erode(inside8, kernel) > 0)] = cv2.GC_FGD
    labels[~add & (cv2.dilate(inside8, kernel) == 0)] = cv2.GC_BGD


class GrabCutSegmenter:
    """Box (+ prior mask) + strokes -> mask with GrabCut in a crop around the box.

    Without a prior, the box (grown by `box_slack`, since tracked boxes are loose) is probable foreground and the
    rest of the crop background. With a prior (the current mask) and strokes, the strokes correct the prior
    locally: around a positive stroke the prior's outside is only probable background (the mask may grow there),
    around a negative one its inside only probable foreground (it may shrink there); elsewhere the prior is kept up
    to a narrow band, so fixing one region does not disturb the rest. User strokes are hard labels; `soft` strokes
    (carried from neighbouring frames) only relabel pixels as probable foreground/background, which steers the
    colour models but can be overruled.
    """

    def __init__(self, work_size: int = 256, margin: float = 0.2, iterations: int = 2, box_slack: float = 0.05,
                 keep_fraction: float = 0.1, local: float = 0.08, reach: float = 1.5, band: float = 0.008,
                 min_fill: float = 0.05) -> None:
        if work_size < 32:
            raise ValueError(f"work_size must be >= 32 pixels, got {work_size}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.work_size = work_size
        self.margin = margin
        self.iterations = iterations
        self.box_slack = box_slack
        self.keep_fraction = keep_fraction
        self.local = local  # a correction frees at least this fraction of the crop around each stroke ...
        self.reach = reach  # ... or this many times the stroke's depth inside the region it corrects
        self.band = band  # elsewhere the prior may move by this fraction of the crop
        self.min_fill = min_fill  # a box-only result under this fraction of the box is a failure

    def segment(self, frame: np.ndarray, box: np.ndarray, scribbles: Sequence[Scribble],
                prior: np.ndarray | None = None, soft: Sequence[Scribble] = ()) -> np.ndarray:
        """Bool mask (H, W) of the object in `box`; `scribbles` are the user's strokes on this frame (hard),
        `prior` the current mask if any, `soft` strokes carried here from neighbouring frames."""
        height, width = frame.shape[:2]
        box = np.asarray(box, dtype=np.float64).reshape(4)
        if not valid_box(box):
            raise ValueError(f"segmentation needs a finite box with positive size, got {box.tolist()}: "
                             "track or draw the object's box on this frame first")
        if prior is not None and prior.shape[:2] != (height, width):
            raise ValueError(f"prior mask is {prior.shape[:2]}, the frame is {(height, width)}: pass a full-frame mask")
        window = window_for([box], width, height, self.work_size, self.margin)
        image = window.crop(frame)
        labels = self.labels(window, box, scribbles, prior, soft)
        fg, _ = grabcut(image, labels, self.iterations)
        if fg is None:
            log.debug("GrabCut skipped: too few foreground or background pixels in the crop")
            fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        x0, y0, x1, y1 = window.box_rect(box)
        if prior is None and not scribbles and np.count_nonzero(fg) < self.min_fill * (x1 - x0) * (y1 - y0):
            fg = self._fallback(image, labels, (x0, y0, x1, y1))
        soft_fg = cv2.GaussianBlur(fg.astype(np.float32), (3, 3), 0)
        return enforce_strokes(window.paste(soft_fg, (height, width)), scribbles, self.keep_fraction)

    def _fallback(self, image: np.ndarray, labels: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        """GrabCut kept (almost) nothing of a box that holds an object (its colours are everywhere around it):
        retry with the box's centre as sure foreground, and at worst return the ellipse inscribed in the box."""
        x0, y0, x1, y1 = rect
        centre = np.zeros(labels.shape, dtype=np.uint8)
        cv2.ellipse(centre, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0), 255, -1)
        retry = labels.copy()
        core = np.zeros_like(centre)
        cv2.ellipse(core, (((x0 + x1) / 2, (y0 + y1) / 2), (0.4 * (x1 - x0), 0.4 * (y1 - y0)), 0), 255, -1)
        retry[(core > 0) & (retry != cv2.GC_BGD)] = cv2.GC_FGD
        fg, _ = grabcut(image, retry, self.iterations)
        if fg is not None and np.count_nonzero(fg) >= self.min_fill * (x1 - x0) * (y1 - y0):
            return fg
        log.debug("GrabCut found no object in the box; using the inscribed ellipse")
        return ((centre > 0) & (labels != cv2.GC_BGD)) | (labels == cv2.GC_FGD)

    def _keep_prior(self, labels: np.ndarray, inside: np.ndarray, scribbles: Sequence[Scribble],
                    window: Window) -> None:
        """A correction changes the mask near its strokes only, and only in the stroke's direction; elsewhere the
        prior is kept up to a narrow band."""
        add = correction_zone(inside, [s for s in scribbles if s.positive], window, self.local, self.reach)
        cut = correction_zone(inside, [s for s in scribbles if not s.positive], window, self.local, self.reach)
        keep_outside_zone(labels, inside, add, cut, max(round(self.band * max(labels.shape)), 1))

    def labels(self, window: Window, box: np.ndarray, scribbles: Sequence[Scribble], prior: np.ndarray | None,
               soft: Sequence[Scribble]) -> np.ndarray:
        """The GrabCut label map of the crop: box or prior, then soft strokes, then hard strokes."""
        labels = np.full((window.h, window.w), cv2.GC_BGD, dtype=np.uint8)
        x0, y0, x1, y1 = window.box_rect(box, self.box_slack)
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
        if prior is not None and np.any(prior):
            inside = window.take(prior) > 0.5
            region = labels == cv2.GC_PR_FGD
            labels[region & ~inside] = cv2.GC_PR_BGD
            labels[inside] = cv2.GC_PR_FGD
            if self.local and scribbles:
                self._keep_prior(labels, inside, scribbles, window)
        cues = stroke_map(soft, window, 0.5)
        labels[cues > 0] = cv2.GC_PR_FGD
        labels[cues < 0] = cv2.GC_PR_BGD
        hard = stroke_map(scribbles, window)
        labels[hard > 0] = cv2.GC_FGD
        labels[hard < 0] = cv2.GC_BGD
        return labels
