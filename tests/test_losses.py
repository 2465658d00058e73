"""The training losses on tiny hand-made cases whose values are worked out by hand in the comments."""
import math

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; two spinning threads on 2 shared cores run 10-50x slower

from scribblebox.models.networks.losses import batch_hard_triplet, iou, mask_loss, scribble_consistency, soft_iou


def emb(*rows):
    """(1, N, D) embeddings from rows of numbers."""
    return torch.tensor([list(r) for r in rows], dtype=torch.float32)[None]


def test_triplet_one_location_follows_the_seed_formula():
    # f_c = 0; frame r: 1 (positive), 3 and 0.5 (negatives).
    # nearest positive: (0-1)^2 = 1; nearest negative: min(9, 0.25) = 0.25; l = 1 - 0.25 + 0.2 = 0.95
    loss = batch_hard_triplet(emb([0.0]), emb([1.0], [3.0], [0.5]), torch.tensor([[[True, False, False]]]), margin=0.2)
    assert loss.item() == pytest.approx(0.95)


def test_triplet_takes_the_nearest_positive_and_sums_over_locations():
    # c0 = (0, 0): positives r0 = (1, 0) d=1, r1 = (0, 2) d=4 -> 1; negative r2 = (3, 0) d=9 -> l0 = 1 - 9 + 1 = -7
    # c1 = (3, 1): positive r2 d=1; negatives r0 d=4+1=5, r1 d=9+1=10 -> 5 -> l1 = 1 - 5 + 1 = -3. Sum: -10.
    c = emb([0.0, 0.0], [3.0, 1.0])
    r = emb([1.0, 0.0], [0.0, 2.0], [3.0, 0.0])
    positive = torch.tensor([[[True, True, False], [False, False, True]]])
    assert batch_hard_triplet(c, r, positive, margin=1.0).item() == pytest.approx(-10.0)
    assert batch_hard_triplet(c, r, positive, margin=1.0, reduction="mean").item() == pytest.approx(-5.0)
    # Hermans et al.'s hinge clamps both terms at 0.
    assert batch_hard_triplet(c, r, positive, margin=1.0, hinge=True).item() == pytest.approx(0.0)
    per_location = batch_hard_triplet(c, r, positive, margin=1.0, reduction="none")
    assert per_location.tolist() == [[pytest.approx(-7.0), pytest.approx(-3.0)]]


def test_triplet_leaves_out_locations_without_positives_or_negatives_and_honours_explicit_negatives():
    c = emb([0.0], [5.0])
    r = emb([1.0], [2.0])
    positive = torch.tensor([[[True, False], [False, False]]])  # location 1 has no positive
    # location 0: 1 - 4 + 0.5 = -2.5; location 1 left out
    assert batch_hard_triplet(c, r, positive, margin=0.5).item() == pytest.approx(-2.5)
    none_negative = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert batch_hard_triplet(c, r, positive, none_negative, margin=0.5).item() == 0.0
    out = batch_hard_triplet(c, r, positive, margin=0.5, reduction="none")
    assert math.isnan(out[0, 1].item())


def test_triplet_gradient_pulls_positives_in_and_pushes_negatives_out():
    c = emb([0.0]).requires_grad_()
    r = emb([1.0], [0.5]).requires_grad_()
    batch_hard_triplet(c, r, torch.tensor([[[True, False]]])).backward()
    # d/dr of (c - r_pos)^2 = -2 (c - r_pos) = 2 > 0: gradient descent moves r_pos towards c (down)
    assert r.grad[0, 0, 0].item() == pytest.approx(2.0)
    assert r.grad[0, 1, 0].item() == pytest.approx(-1.0)  # -(d/dr (c - r_neg)^2) = -(2 * 0.5): moves away


def test_triplet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="positive must be"):
        batch_hard_triplet(emb([0.0]), emb([1.0], [2.0]), torch.ones(1, 1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        batch_hard_triplet(emb([0.0]), emb([1.0]), torch.ones(1, 1, 1, dtype=torch.bool), reduction="max")


def test_scribble_consistency_counts_only_stroked_pixels():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 5.0]]]])
    positive = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    negative = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]])
    # BCE(0 -> 1) = ln 2 = 0.693147; BCE(-1 -> 0) = ln(1 + e^-1) = 0.313262; mean 0.503204
    value = scribble_consistency(logits, positive, negative)
    assert value.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-1))) / 2, abs=1e-6)
    # pixels without strokes do not matter
    other = logits.clone()
    other[0, 0, 1, 1] = -30.0
    assert scribble_consistency(other, positive, negative).item() == pytest.approx(value.item())


def test_scribble_consistency_is_zero_without_strokes_and_keeps_the_graph():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    zero = torch.zeros(2, 1, 4, 4)
    value = scribble_consistency(logits, zero, zero)
    assert value.item() == 0.0
    value.backward()
    assert torch.all(logits.grad == 0)


def test_mask_loss_and_iou_by_hand():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # BCE = ln 2; soft IoU = (0.5 + 1) / (4 * 0.5 + 1 - 0.5 + 1) = 1.5 / 3.5
    assert soft_iou(logits.sigmoid(), target).item() == pytest.approx(1.5 / 3.5)
    assert mask_loss(logits, target).item() == pytest.approx(math.log(2) + 1 - 1.5 / 3.5, abs=1e-6)
    sharp = torch.tensor([[[[3.0, -3.0], [3.0, -3.0]]]])  # predicts the left column
    assert iou(sharp, target).item() == pytest.approx(0.5)
    assert iou(torch.full((1, 1, 2, 2), -1.0), torch.zeros(1, 1, 2, 2)).item() == 1.0
