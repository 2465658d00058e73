"""Mask propagation along a box track (flow warp + narrow-band GrabCut, fusion of both directions) and the carrying
of correction strokes to neighbouring frames, on synthetic videos whose object motion is known exactly."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scribblebox.models import propagation
from scribblebox.models.masks import Scribble
from scribblebox.models.fusion import STEPS, Fusion, forward_weights, pack, unpack
from scribblebox.models.propagation import FlowPropagator, State, blend, box_runs, fuse, plan_chains
from scribblebox.models.scribble_propagation import (
    FramePairs,
    ScribbleCarrier,
    resample,
    split_runs,
)
from scribblebox.models.segmentation import window_for
from scribblebox.models.synthetic import moving_box_scene
from scribblebox.models.video import ArrayVideo

SIZE = (320, 240)
VELOCITY = (3.0, 1.0)


@pytest.fixture(scope="module")
def scene():
    return moving_box_scene(22, SIZE, start=(40, 60, 80, 60), velocity=VELOCITY, seed=1)


@pytest.fixture(scope="module")
def video(scene):
    return ArrayVideo(np.stack(list(scene.frames())))


def part_mask(box: np.ndarray, right: float = 1.0) -> np.ndarray:
    """The object's pixels, or its left `right` fraction (a shape only a correct flow carries along)."""
    x, y, w, h = box
    mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    mask[round(y):round(y + h), round(x):round(x + w * right)] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def test_a_mask_follows_the_moving_object(scene, video) -> None:
    half = [part_mask(b, 0.5) for b in scene.boxes]
    masks = FlowPropagator().propagate(video, scene.boxes, {0: half[0]}, [])
    assert sorted(masks) == list(range(video.num_frames))
    assert all(masks[f].shape == (SIZE[1], SIZE[0]) and masks[f].dtype == bool for f in masks)
    assert min(iou(masks[f], half[f]) for f in range(1, 22)) > 0.7
    # backwards too: from the last frame to the first
    back = FlowPropagator().propagate(video, scene.boxes, {21: half[21]}, [])
    assert min(iou(back[f], half[f]) for f in range(21)) > 0.7


def test_two_approved_frames_are_fused_by_distance(scene, video) -> None:
    """Frame 0 approves the whole object, frame 20 only its left half: frames much nearer one of them follow it."""
    full, half = part_mask(scene.boxes[0]), part_mask(scene.boxes[20], 0.5)
    masks = FlowPropagator().propagate(video, scene.boxes, {0: full, 20: half}, [])
    assert np.array_equal(masks[0], full) and np.array_equal(masks[20], half)  # approved frames are kept as given
    assert min(iou(masks[f], part_mask(scene.boxes[f])) for f in range(1, 6)) > 0.8
    assert min(iou(masks[f], part_mask(scene.boxes[f], 0.5)) for f in range(15, 20)) > 0.8
    # averaging alone (no arbitration): the nearer approved frame wins everywhere
    averaged = FlowPropagator(arbitrate=False).propagate(video, scene.boxes, {0: full, 20: half}, [])
    assert min(iou(averaged[f], part_mask(scene.boxes[f])) for f in range(1, 10)) > 0.8
    assert min(iou(averaged[f], part_mask(scene.boxes[f], 0.5)) for f in range(11, 20)) > 0.8


def two_sweeps(offset: int) -> tuple[State, State]:
    """A white square on dark noise; the forward sweep's mask is the square, the backward one's the square moved
    `offset` pixels right (drifted onto the background). The forward state arrives second: it carries the crop."""
    window = window_for([np.array([0, 0, 64, 64])], 64, 64, 64, 0.0)
    image = np.random.default_rng(0).integers(0, 60, (64, 64, 3)).astype(np.uint8)
    image[16:48, 16:48] = 230
    right, drifted = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    right[16:48, 16:48] = 1
    drifted[16:48, 16 + offset:48 + offset] = 1
    return State(window, right, image=image), State(window, drifted)


def test_arbitration_lets_the_image_settle_what_the_sweeps_disagree_on() -> None:
    forward, backward = two_sweeps(12)
    square = forward.soft > 0.5
    # the backward start frame is a bit nearer (weight 0.4): averaging keeps its drifted square ...
    assert np.array_equal(blend(forward, backward, 0.4).soft > 0.5, backward.soft > 0.5)
    # ... arbitration keeps what both say, and lets GrabCut settle the rest by colour: the white square
    assert iou(FlowPropagator().arbitrate(forward, backward, 0.4).soft > 0.5, square) > 0.95
    # GrabCut at a coarser size (arbitrate_size) changes only the disputed pixels: where the sweeps agree, the
    # vote keeps their full-resolution boundary
    coarse = FlowPropagator(arbitrate_size=32).arbitrate(forward, backward, 0.4).soft
    agreed = square == (backward.soft > 0.5)
    assert np.array_equal(coarse[agreed], (0.4 * forward.soft + 0.6 * backward.soft)[agreed])
    assert iou(coarse > 0.5, square) > 0.9
    # one start frame far nearer (weight 0.1 < 1 - sure_share): its sweep decides, whatever the image says
    assert np.array_equal(FlowPropagator().arbitrate(forward, backward, 0.1).soft > 0.5, backward.soft > 0.5)
    # sweeps that (almost) agree: the weighted vote, no GrabCut
    close_forward, close_backward = two_sweeps(0)
    assert np.array_equal(FlowPropagator().arbitrate(close_forward, close_backward, 0.4).soft, close_forward.soft)
    with pytest.raises(ValueError, match="sure_share"):
        FlowPropagator(sure_share=0.5)


def test_a_chain_that_shrinks_to_a_speck_restarts_from_the_box(scene, video) -> None:
    """Frame 21's approved mask is a speck (3% of the box, a poor correction): the chain from it cannot follow the
    object; it restarts from the box on the next frame instead of outvoting frame 0's whole object near 21."""
    full = part_mask(scene.boxes[0])
    x, y, _, _ = scene.boxes[21]
    speck = np.zeros_like(full)
    speck[round(y) + 20:round(y) + 32, round(x) + 30:round(x) + 42] = True
    masks = FlowPropagator().propagate(video, scene.boxes, {0: full, 21: speck}, [])
    assert min(iou(masks[f], part_mask(scene.boxes[f])) for f in range(1, 21)) > 0.8
    following = FlowPropagator(lost_fill=0).propagate(video, scene.boxes, {0: full, 21: speck}, [])
    assert iou(following[20], part_mask(scene.boxes[20])) < 0.5


def test_fuse_weights_by_distance_and_trust_and_ignores_lost_sweeps() -> None:
    window = window_for([np.array([0, 0, 10, 10])], 20, 20, 16, 0.0)
    left, right = np.zeros((window.h, window.w), np.float32), np.zeros((window.h, window.w), np.float32)
    left[:, : window.w // 2 + 2] = 1
    right[:, window.w // 2 - 2:] = 1
    chains = [(0, 1, 9), (10, -1, 1)]
    forward = {f: State(window, left) for f in range(1, 10)}
    backward = {f: State(window, right) for f in range(1, 10)}
    out = fuse(forward, backward, chains, {0: 1.0, 10: 1.0})
    assert np.array_equal(out[2].soft > 0.5, left > 0.5) and np.array_equal(out[8].soft > 0.5, right > 0.5)
    distrust_right = fuse(forward, backward, chains, {0: 1.0, 10: 0.2})
    assert np.array_equal(distrust_right[7].soft > 0.5, left > 0.5)
    lost = {f: State(window, np.zeros_like(right)) for f in range(1, 10)}
    assert np.array_equal(fuse(forward, lost, chains, {0: 1.0, 10: 1.0})[8].soft, left)


def fuse_before_issue_6(forward: dict[int, State], backward: dict[int, State], chains, trust) -> dict[int, State]:
    """`fuse` as it was before soft masks were fused frame by frame (the reference the new path must reproduce)."""
    weights = forward_weights(chains, trust)
    out = dict(forward)
    for f, state in backward.items():
        if f not in out:
            out[f] = state
            continue
        weight = weights[f]
        if not np.any(state.soft > 0.5):
            continue
        if not np.any(out[f].soft > 0.5):
            out[f] = state
            continue
        mine = out[f]
        out[f] = State(mine.window, weight * mine.soft + (1 - weight) * state.window.convert(state.soft, mine.window))
    return out


def test_pack_keeps_every_pixel_on_its_side_of_one_half_at_a_fraction_of_the_bytes() -> None:
    half = np.float32(0.5)
    edge = [np.nextafter(half, np.float32(0)), half, np.nextafter(half, np.float32(1)), 0.0, 1.0]
    soft = np.concatenate([np.array(edge, np.float32), np.random.default_rng(0).random(10_000, dtype=np.float32)])
    steps = pack(soft)
    assert steps.dtype == np.uint16 and steps.nbytes == soft.nbytes // 2
    back = unpack(steps)
    assert back.dtype == np.float32 and np.array_equal(back > 0.5, soft > 0.5)
    assert np.abs(back - soft).max() <= 1 / STEPS


@pytest.mark.parametrize("order", ["forward first", "backward first", "interleaved"])
def test_fusion_frame_by_frame_equals_fusing_whole_sweeps(order: str) -> None:
    """Whichever sweep reaches a frame first, the frame waits packed and is blended as the old whole-sweep fusion
    did (a lost sweep does not vote); nothing waits once both sweeps are done."""
    window = window_for([np.array([0, 0, 12, 10])], 20, 16, 16, 0.0)
    rng = np.random.default_rng(1)
    chains, trust = [(0, 1, 8), (9, -1, 1)], {0: 1.0, 9: 0.5}
    sweeps = {d: {f: State(window, rng.random((window.h, window.w), dtype=np.float32)) for f in range(1, 9)}
              for d in (1, -1)}
    sweeps[-1][4] = State(window, np.zeros((window.h, window.w), np.float32))  # the backward sweep lost it here
    expected = fuse_before_issue_6(sweeps[1], sweeps[-1], chains, trust)
    fusion = Fusion(chains, trust, blend, lambda state: state.soft)
    arrivals = {"forward first": [(f, d) for d in (1, -1) for f in range(1, 9)],
                "backward first": [(f, d) for d in (-1, 1) for f in range(8, 0, -1)],
                "interleaved": [(f, d) for f in range(1, 9) for d in (1, -1)[:: 1 if f % 2 else -1]]}[order]
    for f, d in arrivals:
        fusion.add(f, d, sweeps[d][f])
        assert all(state.soft.dtype == np.uint16 for _, state in fusion.waiting.values())
    softs = fusion.result()
    assert not fusion.waiting and sorted(softs) == list(range(1, 9))
    assert max(np.abs(softs[f] - expected[f].soft).max() for f in softs) < 1e-4
    assert np.array_equal(softs[4] > 0.5, sweeps[1][4].soft > 0.5)


def test_propagation_fused_frame_by_frame_matches_the_previous_fusion(scene, video, monkeypatch) -> None:
    """On a video whose two approved frames disagree (whole object / left half), the averaged masks equal those of the
    previous implementation, which kept every float32 soft mask of both sweeps until the end and fused them then."""
    runs = []

    class Recording(Fusion):
        def __init__(self, chains, trust, *args) -> None:
            super().__init__(chains, trust, *args)
            self.chains, self.trust, self.sweeps = chains, trust, {1: {}, -1: {}}
            runs.append(self)

        def add(self, frame: int, direction: int, state: State) -> None:
            self.sweeps[direction][frame] = state
            super().add(frame, direction, state)

    monkeypatch.setattr(propagation, "Fusion", Recording)
    approved = {0: part_mask(scene.boxes[0]), 14: part_mask(scene.boxes[14], 0.5)}
    masks = FlowPropagator(arbitrate=False).propagate(video, scene.boxes, approved, [])
    (run,) = runs
    assert len(run.sweeps[1].keys() & run.sweeps[-1].keys()) == 13  # frames 1..13 are fused
    before = fuse_before_issue_6(run.sweeps[1], run.sweeps[-1], run.chains, run.trust)
    shape = (video.height, video.width)
    expected = {f: state.window.paste(state.soft, shape) for f, state in before.items()}
    assert sorted(expected) == [f for f in range(video.num_frames) if f not in approved]
    assert min(iou(masks[f], expected[f]) for f in expected) > 0.999


def test_masks_never_cross_frames_without_a_box(scene, video) -> None:
    boxes = scene.boxes.copy()
    boxes[8:11] = np.nan  # the object is absent (occluded) for three frames
    assert box_runs(boxes) == [(0, 8), (11, 22)]
    masks = FlowPropagator().propagate(video, boxes, {0: part_mask(scene.boxes[0])}, [])
    assert not any(f in masks for f in (8, 9, 10))
    # the run after the gap has no approved frame: it is seeded from its box alone
    assert min(iou(masks[f], part_mask(scene.boxes[f])) for f in range(11, 22)) > 0.8


def test_chains_stop_at_the_next_start_frame_and_at_gaps() -> None:
    boxes = np.ones((12, 4))
    boxes[6] = np.nan
    chains = plan_chains(boxes, [2, 4, 9])
    # frame 3 lies between two start frames: both reach it (and get fused); nothing crosses the gap at 6
    assert sorted(chains) == [(2, -1, 0), (2, 1, 3), (4, -1, 3), (4, 1, 5), (9, -1, 7), (9, 1, 11)]


def test_a_carried_stroke_moves_with_the_object(scene, video) -> None:
    x, y, _w, _h = scene.boxes[5]
    stroke = Scribble(5, np.array([[x + 15, y + 20], [x + 60, y + 35]]), False, 3.0)
    pairs = FramePairs(video, scene.boxes, 256, 0.2)
    carried = ScribbleCarrier(window=4).carry(pairs, [stroke])
    assert sorted(carried) == [1, 2, 3, 4, 6, 7, 8, 9]
    for frame, pieces in carried.items():
        shift = (frame - 5) * np.array(VELOCITY)
        points = np.concatenate([c.scribble.points for c in pieces])
        expected = resample(stroke.points, 2.0) + shift
        assert len(points) > 0.9 * len(expected)
        assert np.abs(points - expected[: len(points)]).max() < 1.5
        assert all(c.distance == abs(frame - 5) and not c.scribble.positive and c.scribble.frame == frame
                   for c in pieces)


def test_carrying_stops_at_frames_the_user_touched_and_drops_points_leaving_the_box(scene, video) -> None:
    x, y, w, _h = scene.boxes[5]
    inside = Scribble(5, np.array([[x + 20, y + 30], [x + 50, y + 30]]), True, 3.0)
    other = Scribble(8, np.array([[x + 30, y + 30]]), True, 3.0)
    pairs = FramePairs(video, scene.boxes, 256, 0.2)
    carried = ScribbleCarrier(window=10).carry(pairs, [inside, other])
    from_five = {f for f, pieces in carried.items() if any(c.distance == abs(f - 5) for c in pieces)}
    assert 8 in from_five and 9 not in from_five  # it reaches the user's frame 8 as a cue, and no farther
    # a stroke on the static background leaves the moving box within a few frames and is dropped
    outside = Scribble(5, np.array([[x + w + 2, y + 10], [x + w + 2, y + 40]]), False, 3.0)
    far = ScribbleCarrier(window=10).carry(pairs, [outside])
    assert not any(f > 8 or f < 2 for f in far)


def test_strokes_are_cut_where_points_were_dropped() -> None:
    points = np.arange(10, dtype=float)[:, None].repeat(2, 1)
    pieces = split_runs(points[[0, 1, 2, 6, 7]], np.array([0, 1, 2, 6, 7]))
    assert [len(p) for p in pieces] == [3, 2]
    dense = resample(np.array([[0.0, 0.0], [10.0, 0.0]]), 2.0)
    assert len(dense) == 6 and np.allclose(dense[-1], [10, 0])


def test_a_waiting_state_keeps_only_what_the_trim_leaves() -> None:
    """The classical engine trims the frame crop from a state that waits for the other sweep (memory, issue #6):
    only the state that arrives second needs it."""
    window = window_for([np.array([0, 0, 8, 8])], 8, 8, 8, 0.0)
    fusion = Fusion([(0, 1, 2), (3, -1, 1)], {0: 1.0, 3: 1.0}, blend, lambda state: state.soft,
                    lambda state: replace(state, image=None))
    fusion.add(1, 1, State(window, np.ones((8, 8), np.float32), image=np.zeros((8, 8, 3), np.uint8)))
    assert fusion.waiting[1][1].image is None and fusion.waiting[1][1].soft.dtype == np.uint16
