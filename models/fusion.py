"""Fusing the two sweeps of a propagation (forward and backward through the video) frame by frame, for both mask
engines (classical and learned).

Between two start frames a and b, frame t averages both sweeps' soft masks with weights proportional to trust /
distance. Memory (issue #6): a frame is fused and thresholded as soon as its second sweep reaches it; until then its
first soft mask waits packed as uint16, so nothing per frame is kept but the full-frame bool masks returned.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Generic, TypeVar

import numpy as np

Chain = tuple[int, int, int]  # (anchor frame, direction, last frame inclusive)
S = TypeVar("S")  # a sweep's per-frame state: a dataclass with a `soft` field (a float32 soft mask in [0, 1])


def by_segment(chains: list[Chain]) -> list[Chain]:
    """The chains with both walks between two start frames one after the other (forward first), so a frame waits
    for its second walk at most one chain long, and the second walk finds its frames in the video's cache. The
    classical engine's two sweeps (one thread each) take their chains in this order too, so both work between the
    same two start frames at about the same time."""
    return sorted(chains, key=lambda c: (min(c[0], c[2]), -c[1]))


def forward_weights(chains: list[Chain], trust: dict[int, float]) -> dict[int, float]:
    """For each frame reached from both sides, the forward sweep's share: 1 / distance to each start frame times
    that start frame's trust, normalised (shared by the classical and the learned engines)."""
    origin: dict[int, dict[int, int]] = {}
    for anchor, direction, last in chains:
        for f in range(anchor + direction, last + direction, direction):
            origin.setdefault(f, {})[direction] = anchor
    weights = {}
    for f, sides in origin.items():
        if 1 in sides and -1 in sides:
            a, b = sides[1], sides[-1]
            wa, wb = trust[a] / (f - a), trust[b] / (b - f)
            weights[f] = wa / (wa + wb)
    return weights


STEPS = 65535  # a waiting soft mask's levels: uint16, half of float32's bytes, 30x finer than float16 near 0.5


def pack(soft: np.ndarray) -> np.ndarray:
    """A soft mask in [0, 1] as uint16 steps of 1 / STEPS. Every pixel stays on its side of 0.5, so the mask's own
    threshold, and whether it lost the object, are exactly those of the float mask; a blend moves by < 1e-5."""
    steps = np.rint(np.clip(soft, 0, 1) * STEPS)
    steps[(soft <= 0.5) & (steps > STEPS // 2)] = STEPS // 2
    return steps.astype(np.uint16)


def unpack(steps: np.ndarray) -> np.ndarray:
    return steps.astype(np.float32) * np.float32(1 / STEPS)


class Fusion(Generic[S]):
    """Sweeps' soft masks -> a full-frame bool mask per frame, made as soon as the frame's last sweep has reached it:
    a frame both sweeps reach waits for the second with its first soft mask packed (`pack`), and is then blended as
    `fuse` does. So memory per frame is the result's bool mask alone. Thread-safe: both sweeps add concurrently."""

    def __init__(self, chains: list[Chain], trust: dict[int, float], blend: Callable[[S, S, float], S],
                 paste: Callable[[S], np.ndarray], trim: Callable[[S], S] | None = None) -> None:
        self.weights = forward_weights(chains, trust)  # exactly the frames both sweeps reach
        self.blend = blend
        self.trim = trim or (lambda state: state)  # what a waiting state keeps (the blend may need more of the second)
        self.paste = paste
        self.masks: dict[int, np.ndarray] = {}
        self.waiting: dict[int, tuple[int, S]] = {}  # frame -> (direction, state with a packed soft mask)
        self._lock = threading.Lock()

    def add(self, frame: int, direction: int, state: S) -> None:
        if frame in self.weights:
            with self._lock:
                first = self.waiting.pop(frame, None)
                if first is None:
                    self.waiting[frame] = (direction, replace(self.trim(state), soft=pack(state.soft)))
                    return
            other = replace(first[1], soft=unpack(first[1].soft))
            forward, backward = (state, other) if direction > 0 else (other, state)
            state = self.blend(forward, backward, self.weights[frame])
        self.masks[frame] = self.paste(state)

    def result(self) -> dict[int, np.ndarray]:
        """Frame -> bool mask in frame order (sweeps add in no set order), once every sweep is done."""
        if self.waiting:
            raise RuntimeError(f"frames {sorted(self.waiting)[:10]} were reached by one sweep only although the chains "
                               "say both reach them: the sweeps did not follow the planned chains")
        return dict(sorted(self.masks.items()))
