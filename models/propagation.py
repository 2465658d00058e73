"""Mask propagation through a box track: from every start frame forward and backward, fused in between.

One step carries frame s's mask to its neighbour d: both frames are cropped in a shared window (`FramePairs`),
the mask is warped by the DIS flow d -> s, and GrabCut re-cuts a narrow band (~2 working pixels) around the warped
boundary: the flow is usually right to a pixel or two, and GrabCut snaps the boundary to d's edges so the error
does not accumulate. Outside d's grown box is background. Strokes carried from the user's frames free the labels
around them (as the correction did on the user's frame) and mark their pixels: hard near their frame, probable
farther away. Colour models travel along the chain and are re-fitted on each frame (no k-means per frame).

Two sweeps walk the video (one forward, one backward) in two threads; OpenCV releases the GIL, so both CPU cores
work. Between two start frames a and b, frame t weighs both sweeps' soft masks by trust / distance (approved frames
trust 1, frames segmented from their box alone `weak_weight`). Where the sweeps disagree and neither start frame
clearly outweighs the other, GrabCut settles the disputed pixels from the frame's colours (`arbitrate`): a plain
weighted average would keep the nearer sweep's region even after it drifted onto the background. A chain whose mask
shrinks to a speck of its box has lost the object (`collapsed`) and restarts from the box there.
Memory (issue #6): a frame is fused and thresholded as soon as its second sweep reaches it (`fusion.Fusion`); until then
its first soft mask waits as uint16, and nothing else per frame is kept but the full-frame bool masks returned.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .fusion import Chain, Fusion, by_segment, forward_weights
from .masks import Scribble
from .scribble_propagation import Carried, FramePairs, ScribbleCarrier, locked_frames
from .segmentation import (
    GrabCutSegmenter,
    Models,
    Window,
    colour_models,
    correction_zone,
    grabcut,
    keep_components,
    stroke_map,
    valid_box,
)
from .video import Video

log = logging.getLogger(__name__)

AGREE = 0.05  # two sweeps whose masks differ on under this fraction of their union agree: their vote is kept


@dataclass
class State:
    """What a chain carries from frame to frame: the soft mask (float32 in [0, 1]) in the frame's own window,
    and the colour models, re-fitted on every frame instead of re-clustered."""

    window: Window
    soft: np.ndarray
    models: Models | None = None
    image: np.ndarray | None = None  # the frame in `window`: only on a state handed to the fusion, for `arbitrate`


def box_runs(boxes: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive frames that have a valid box: masks never travel across a gap."""
    valid = np.array([valid_box(b) for b in boxes], dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], valid.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


class FlowPropagator:
    """Flow-warped masks re-cut by GrabCut in a narrow band (see the module docstring)."""

    def __init__(self, work_size: int = 256, margin: float = 0.2, scribble_window: int = 10, band: float = 0.008,
                 refine_size: int = 256, iterations: int = 1, clamp: float = 0.15, hard_distance: int = 3,
                 keep_fraction: float = 0.1, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, workers: int = 2,
                 carry_models: bool = True, weak_weight: float = 0.5, cue_local: float = 0.04,
                 cue_reach: float = 1.5, arbitrate: bool = True, sure_share: float = 0.75,
                 lost_fill: float = 0.05, arbitrate_size: int = 128) -> None:
        if not 0 < weak_weight <= 1:
            raise ValueError(f"weak_weight must be in (0, 1], got {weak_weight}")
        if not 0.5 < sure_share <= 1:
            raise ValueError(f"sure_share must be in (0.5, 1], got {sure_share}")
        self.work_size = work_size
        self.margin = margin
        self.band = band
        self.refine_size = refine_size
        self.iterations = iterations
        self.clamp = clamp
        self.hard_distance = hard_distance
        self.keep_fraction = keep_fraction
        self.preset = preset
        self.workers = workers
        self.carry_models = carry_models
        self.weak_weight = weak_weight
        self.cue_local = cue_local
        self.cue_reach = cue_reach
        self.arbitrate_sweeps = arbitrate
        self.sure_share = sure_share
        self.arbitrate_size = arbitrate_size
        self.lost_fill = lost_fill
        self.carrier = ScribbleCarrier(scribble_window)
        self.segmenter = GrabCutSegmenter(work_size, margin)

    def pairs(self, video: Video, boxes: np.ndarray) -> FramePairs:
        return FramePairs(video, boxes, self.work_size, self.margin, self.preset)

    def propagate(self, video: Video, boxes: np.ndarray, approved: dict[int, np.ndarray],
                  scribbles: Sequence[Scribble], carried: dict[int, list[Carried]] | None = None,
                  pairs: FramePairs | None = None, weak: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
        """Masks for every frame with a box (and every approved frame). `weak`: extra start frames that are less
        trusted than approved ones (e.g. segmented from their box alone): they count `weak_weight` as much in the
        fusion. A run of boxed frames without any start frame is seeded by segmenting its middle frame from its box."""
        boxes = check_boxes(boxes, video.num_frames)
        pairs = pairs or self.pairs(video, boxes)
        if carried is None:
            carried = self.carrier.carry(pairs, scribbles)
        anchors = {int(f): np.asarray(m, dtype=bool) for f, m in approved.items()}
        shape = (video.height, video.width)
        for f, m in anchors.items():
            if m.shape != shape:
                raise ValueError(f"approved mask of frame {f} is {m.shape}, the video is {shape}: pass full-frame masks")
        seeds = {**{int(f): np.asarray(m, dtype=bool) for f, m in (weak or {}).items()}, **anchors}
        trust = {f: 1.0 if f in anchors else self.weak_weight for f in seeds}
        for start, stop in box_runs(boxes):
            if not any(start <= f < stop for f in seeds):
                mid = (start + stop - 1) // 2
                seeds[mid] = self.segmenter.segment(pairs.frame(mid), boxes[mid], [])
                trust[mid] = self.weak_weight
        chains = plan_chains(boxes, sorted(f for f in seeds if valid_box(boxes[f])))
        states = {f: self.seed(pairs, f, m) for f, m in seeds.items() if valid_box(boxes[f])}
        fusion = Fusion(chains, trust, self.arbitrate if self.arbitrate_sweeps else blend,
                        lambda state: state.window.paste(state.soft, shape), lambda state: replace(state, image=None))
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            jobs = [pool.submit(self._sweep, pairs, [c for c in by_segment(chains) if c[1] == d], states, carried,
                                fusion.add) for d in (1, -1)]
            for job in jobs:
                job.result()
        masks = fusion.result()
        lost = [f for f, m in masks.items() if not m.any()]
        if lost:  # every sweep that reached these frames lost the object, yet the box says it is there
            log.debug("object lost by propagation on %d frames; segmenting them from their box", len(lost))
            masks.update({f: self.segmenter.segment(pairs.frame(f), boxes[f], []) for f in lost})
        masks.update(seeds)
        return masks

    def _sweep(self, pairs: FramePairs, chains: list[Chain], seeds: dict[int, State],
               carried: dict[int, list[Carried]], sink: Callable[[int, int, State], None]) -> None:
        """Follow each chain from its anchor, one step per frame, handing each frame's soft mask (in its own window)
        to `sink(frame, direction, state)` at once: a sweep keeps only its current state."""
        for anchor, direction, last in chains:
            state = seeds[anchor]
            previous: np.ndarray | None = None
            for frame, image in locked_frames(pairs.video, anchor, last + direction, pairs.lock):
                if previous is not None:  # the colour models stay with the chain; the fusion gets the frame's crop
                    state = self.step(pairs, frame - direction, frame, previous, image, state, carried.get(frame, []))
                    if self.collapsed(state, pairs.boxes[frame]):
                        state = self.restart(pairs, frame, image)
                    crop = state.window.crop(image) if self.arbitrate_sweeps else None
                    sink(frame, direction, State(state.window, state.soft, state.models, crop))
                previous = image

    def arbitrate(self, forward: State, backward: State, weight: float) -> State:
        """A frame both sweeps reached. Where they agree, or where the weighted vote (`blend`) reaches `sure_share`
        (one start frame is much nearer or more trusted), the vote decides; where they disagree and neither clearly
        outweighs the other, GrabCut decides from the frame's colours. Averaging alone keeps exactly one side's
        region, even when the nearer sweep has drifted onto the background and the farther one is right.
        The state that arrived second carries the frame's crop (`image`); the waiting one was trimmed of it."""
        if not np.any(backward.soft > 0.5) or not np.any(forward.soft > 0.5):
            return blend(forward, backward, weight)  # a lost sweep does not vote
        second, first = (forward, backward) if forward.image is not None else (backward, forward)
        share = weight if second is forward else 1 - weight
        mine, other = second.soft > 0.5, first.window.convert(first.soft, second.window)
        vote = share * second.soft + (1 - share) * other
        theirs = other > 0.5
        if second.image is None or np.count_nonzero(mine != theirs) < AGREE * np.count_nonzero(mine | theirs):
            return State(second.window, vote)
        labels = np.where(vote > 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        labels[(mine & theirs) | (vote >= self.sure_share)] = cv2.GC_FGD
        labels[(~mine & ~theirs) | (vote <= 1 - self.sure_share)] = cv2.GC_BGD
        # the forward chain's colours: which sweep's thread arrives second must not change the result
        settled, _ = self.refine(second.image, labels, forward.models, self.arbitrate_size)
        if not np.any(settled > 0.5):  # GrabCut gave everything to the background: the object is there (its box)
            return State(second.window, vote)
        # only the disputed pixels: the vote keeps the sweeps' full-resolution boundary where they agree
        disputed = (labels == cv2.GC_PR_FGD) | (labels == cv2.GC_PR_BGD)
        return State(second.window, np.where(disputed, settled, vote))

    def collapsed(self, state: State, box: np.ndarray) -> bool:
        """The chain's mask covers under `lost_fill` of the frame's box: it has lost the object (a chain started from
        a poor mask shrinks to a speck, often beside the object) and restarts from the box there."""
        x0, y0, x1, y1 = state.window.box_rect(box)
        return np.count_nonzero(state.soft[y0:y1, x0:x1] > 0.5) < self.lost_fill * max((x1 - x0) * (y1 - y0), 1)

    def restart(self, pairs: FramePairs, frame: int, image: np.ndarray) -> State:
        """A collapsed chain starts again from the frame's box: one GrabCut pass in the chain's window with fresh
        colour models (the chain's own led it astray), as cheap as a step; the segmenter (two passes and fallbacks,
        several times the cost) only when that also finds next to nothing."""
        window = pairs.own_window(frame)
        labels = self.segmenter.labels(window, pairs.boxes[frame], [], None, ())  # the box probable, the rest not
        soft, models = self.refine(window.crop(image), labels, None)
        state = State(window, soft, models if self.carry_models else None)
        if self.collapsed(state, pairs.boxes[frame]):
            return self.seed(pairs, frame, self.segmenter.segment(image, pairs.boxes[frame], []), image)
        return state

    def seed(self, pairs: FramePairs, frame: int, mask: np.ndarray, image: np.ndarray | None = None) -> State:
        """A chain's start: the anchor's mask in its own window, and colour models fitted to it."""
        window = pairs.own_window(frame)
        soft = window.take(mask)
        image = pairs.frame(frame) if image is None else image
        models = colour_models(window.crop(image), soft > 0.5) if self.carry_models else None
        return State(window, soft, models)

    def step(self, pairs: FramePairs, src: int, dst: int, src_image: np.ndarray, dst_image: np.ndarray,
             state: State, cues: list[Carried]) -> State:
        """Frame src's soft mask carried to its neighbour dst (warp by flow, then GrabCut around the warp)."""
        window, flow = pairs.flow(dst, src, dst_image, src_image)
        soft = state.window.convert(state.soft, window)
        grid = np.mgrid[0:window.h, 0:window.w].astype(np.float32)
        warped = cv2.remap(soft, grid[1] + flow[..., 0], grid[0] + flow[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        labels = self.labels(warped, window.box_rect(pairs.boxes[dst], self.clamp), window, cues)
        refined, models = self.refine(window.crop(dst_image), labels, state.models)
        own = pairs.own_window(dst)
        return State(own, window.convert(refined, own), models if self.carry_models else None)

    def labels(self, prior: np.ndarray, clamp: tuple[int, int, int, int], window: Window,
               cues: list[Carried]) -> np.ndarray | None:
        """GrabCut labels from the warped mask: farther than the band inside it foreground, outside it background
        (and outside the grown box), the band probable (by the warp); None when the object was lost. The band is
        narrow: the flow is usually right to a pixel or two, and GrabCut only snaps the boundary to the edges."""
        h, w = prior.shape
        inside = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = clamp
        inside[y0:y1, x0:x1] = True
        core = (prior > 0.5) & inside
        if np.count_nonzero(core) < 4:
            return None
        r = max(round(self.band * max(h, w)), 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        labels = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
        labels[core] = cv2.GC_PR_FGD
        labels[cv2.erode(core.astype(np.uint8), kernel) > 0] = cv2.GC_FGD
        labels[cv2.dilate(core.astype(np.uint8), kernel) == 0] = cv2.GC_BGD
        labels[~inside] = cv2.GC_BGD
        self._apply_cues(labels, core, cues, window)
        labels[~inside] = cv2.GC_BGD
        return labels

    def refine(self, image: np.ndarray, labels: np.ndarray | None, models: Models | None,
               limit: int | None = None) -> tuple[np.ndarray, Models | None]:
        """GrabCut on the part of the crop that is not certain background, resized to at most `limit` pixels
        (default `refine_size`) -> soft mask."""
        h, w = image.shape[:2]
        out = np.zeros((h, w), np.float32)
        if labels is None:
            return out, models
        ys, xs = np.nonzero(labels != cv2.GC_BGD)
        y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, h)
        x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, w)
        roi_image, roi_labels = image[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        scale = min(1.0, (limit or self.refine_size) / max(h, w))
        if scale < 1.0:
            size = (max(round((x1 - x0) * scale), 1), max(round((y1 - y0) * scale), 1))
            roi_image = cv2.resize(roi_image, size, interpolation=cv2.INTER_AREA)
            roi_labels = cv2.resize(roi_labels, size, interpolation=cv2.INTER_NEAREST)
        fg, models = grabcut(roi_image, roi_labels, self.iterations, models)
        if fg is None:
            fg = (roi_labels == cv2.GC_FGD) | (roi_labels == cv2.GC_PR_FGD)
        fg = keep_components(fg, None, self.keep_fraction).astype(np.float32)
        if scale < 1.0:
            fg = cv2.resize(fg, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        out[y0:y1, x0:x1] = fg
        return out, models

    def _apply_cues(self, labels: np.ndarray, core: np.ndarray, cues: list[Carried], window: Window) -> None:
        """Carried strokes free the labels around them (as a correction on the user's frame does) and mark their
        pixels: hard labels near their frame, probable labels farther away."""
        if not cues or not self.cue_reach:
            return
        strokes = [c.scribble for c in cues]
        free = correction_zone(core, strokes, window, self.cue_local, self.cue_reach)
        labels[free & (labels == cv2.GC_FGD)] = cv2.GC_PR_FGD
        labels[free & (labels == cv2.GC_BGD)] = cv2.GC_PR_BGD
        near = [c.scribble for c in cues if c.distance <= self.hard_distance]
        far = [c.scribble for c in cues if c.distance > self.hard_distance]
        if far:
            marks = stroke_map(far, window)
            labels[(marks > 0) & (labels != cv2.GC_FGD)] = cv2.GC_PR_FGD
            labels[(marks < 0) & (labels != cv2.GC_BGD)] = cv2.GC_PR_BGD
        if near:
            marks = stroke_map(near, window)
            labels[marks > 0] = cv2.GC_FGD
            labels[marks < 0] = cv2.GC_BGD


def check_boxes(boxes: np.ndarray, num_frames: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (num_frames, 4):
        raise ValueError(f"boxes must be (num_frames, 4) = ({num_frames}, 4) x, y, w, h with NaN rows where the "
                         f"object is absent, got {boxes.shape}")
    return boxes


def plan_chains(boxes: np.ndarray, anchors: list[int]) -> list[Chain]:
    """Every anchor's forward and backward chains, each ending before the next anchor or at its run's end."""
    chains: list[Chain] = []
    for start, stop in box_runs(boxes):
        inside = [a for a in anchors if start <= a < stop]
        for i, a in enumerate(inside):
            nxt = inside[i + 1] if i + 1 < len(inside) else stop
            prv = inside[i - 1] if i else start - 1
            if nxt - a > 1:
                chains.append((a, 1, nxt - 1))
            if a - prv > 1:
                chains.append((a, -1, prv + 1))
    return chains


def blend(forward: State, backward: State, weight: float) -> State:
    """A frame both sweeps reached: their soft masks averaged, the forward one weighing `weight`. A sweep that lost
    the object (empty mask) does not vote: the object is known to be in the box."""
    if not np.any(backward.soft > 0.5):
        return forward
    if not np.any(forward.soft > 0.5):
        return backward
    other = backward.window.convert(backward.soft, forward.window)
    return State(forward.window, weight * forward.soft + (1 - weight) * other)


def fuse(forward: dict[int, State], backward: dict[int, State], chains: list[Chain],
         trust: dict[int, float]) -> dict[int, State]:
    """One soft mask per frame from two whole sweeps (`blend` where both reached it, weights by temporal proximity:
    1 / distance to each start frame times the start frame's trust). `Fusion` does the same frame by frame."""
    weights = forward_weights(chains, trust)
    out = {**backward, **forward}
    for f in forward.keys() & backward.keys():
        out[f] = blend(forward[f], backward[f], weights[f])
    return out
