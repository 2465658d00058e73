"""Shapes, gradients and wiring of the learned networks, the crop geometry, and the learned engine's protocols."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; two spinning threads on 2 shared cores run 10-50x slower

from scribblebox.models.masks import Scribble
from scribblebox.models.networks import learned_engine
from scribblebox.models.networks.checkpoint import save_checkpoint
from scribblebox.models.networks.config import SIZES, NetConfig
from scribblebox.models.networks.crops import box_map, convert, crop_matrix, grid_theta, paste, warp
from scribblebox.models.networks.decoders import interactive_decoder, propagation_decoder
from scribblebox.models.networks.encoder import Encoder
from scribblebox.models.networks.model import ScribbleBoxModel, count_parameters
from scribblebox.models.networks.refine import Refine
from scribblebox.models.networks.scribble_net import match_strokes, stroke_embeddings
from scribblebox.models.video import ArrayVideo

SMALL = SIZES["small"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ScribbleBoxModel(SMALL).eval()


def crops(batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    return image, mask


def test_small_config_is_small_and_paper_config_has_the_seeds_decoder():
    assert 300_000 <= count_parameters(ScribbleBoxModel(SMALL)) <= 1_000_000
    for build in (propagation_decoder, interactive_decoder):
        assert build(SIZES["paper"]).widths == (224, 224, 128)


def test_paper_decoder_refinement_outputs_are_224_224_128_and_half_size():
    cfg = SIZES["paper"]
    decoder = propagation_decoder(cfg).eval()
    seen = {}
    for name in ("refine1", "refine2", "refine3"):
        getattr(decoder, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    c4, c8, c16 = cfg.widths
    with torch.no_grad():  # a 32x32 crop: features at 2x2 (1/16), 4x4 (1/8), 8x8 (1/4)
        out = decoder(torch.zeros(1, 2 * c16, 2, 2), torch.zeros(1, c8, 4, 4), torch.zeros(1, c4, 8, 8))
    assert [seen[n][1] for n in ("refine1", "refine2", "refine3")] == [224, 224, 128]
    assert [tuple(seen[n][-2:]) for n in ("refine1", "refine2", "refine3")] == [(4, 4), (8, 8), (16, 16)]
    assert tuple(out.shape) == (1, 1, 16, 16)


def test_encoder_strides_and_size_check():
    encoder = Encoder(SMALL).eval()
    image, mask = crops(size=96)
    f4, f8, f16 = encoder(image, mask)
    assert [tuple(f.shape) for f in (f4, f8, f16)] == [(2, 24, 24, 24), (2, 40, 12, 12), (2, 80, 6, 6)]
    with pytest.raises(ValueError, match="multiple of 16"):
        encoder(torch.zeros(1, 3, 40, 48, dtype=torch.uint8), torch.zeros(1, 1, 40, 48))


def test_refinement_modules_with_and_without_skip():
    x = torch.randn(1, 8, 4, 4)
    with_skip = Refine(8, 6, skip_channels=5, guide_channels=2)
    out = with_skip(x, torch.randn(1, 5, 8, 8), torch.zeros(1, 2, 32, 32))
    assert tuple(out.shape) == (1, 6, 8, 8)
    no_skip = Refine(8, 4)
    assert no_skip.side is None and tuple(no_skip(x).shape) == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="skip connection"):
        with_skip(x, None, torch.zeros(1, 2, 32, 32))


def test_state_dict_holds_the_shared_encoder_once(model):
    keys = list(model.state_dict())
    assert any(k.startswith("encoder.") for k in keys)
    assert not any(".encoder." in k for k in keys)
    assert {k.split(".")[0] for k in keys} == {"encoder", "propagation", "interactive", "scribble"}
    assert model.propagation.encoder is model.interactive.encoder is model.scribble.encoder is model.encoder


def test_propagation_net_half_size_output_and_gradients_reach_encoder_and_decoder():
    torch.manual_seed(1)
    net = ScribbleBoxModel(SMALL).train()
    image, mask = crops(size=64)
    logits = net.propagation(image, mask, image.flip(0), mask.flip(0))
    assert tuple(logits.shape) == (2, 1, 32, 32)
    logits.mean().backward()
    for part in (net.encoder, net.propagation.decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in net.interactive.parameters())


def test_interactive_net_output_depends_on_strokes_and_trains_with_frozen_encoder():
    torch.manual_seed(2)
    net = ScribbleBoxModel(SMALL)
    net.freeze_encoder()
    net.train()
    assert not net.encoder.training and all(not p.requires_grad for p in net.encoder.parameters())
    image, _ = crops(batch=1, size=64)
    box, zero = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    box[..., 12:52, 12:52] = 1
    stroke = zero.clone()
    stroke[..., 30:34, 20:44] = 1
    plain = net.interactive(image, box, zero, zero, zero)
    stroked = net.interactive(image, box, zero, stroke, zero)
    assert tuple(plain.shape) == (1, 1, 32, 32)
    assert not torch.allclose(plain, stroked)
    stroked.mean().backward()
    assert all(p.grad is not None for p in net.interactive.parameters())
    assert all(p.grad is None for p in net.encoder.parameters())


def test_scribble_embeddings_are_unit_vectors_at_stride_8_with_gradients():
    net = ScribbleBoxModel(SMALL).train()
    image, mask = crops(size=64)
    emb = net.scribble(image, mask)
    assert tuple(emb.shape) == (2, SMALL.embedding, 8, 8)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2, 8, 8), atol=1e-5)
    emb[:, 0].sum().backward()
    assert all(p.grad is not None for p in net.scribble.parameters())


def test_stroke_matching_labels_locations_by_their_nearest_stroke_embedding():
    e = torch.zeros(2, 2, 2)  # D=2 on a 2x2 grid: (1,0) top-left, (0,1) top-right, (-1,0) bottom-left, (0,-1) b-r
    e[:, 0, 0], e[:, 0, 1], e[:, 1, 0], e[:, 1, 1] = torch.tensor([1.0, 0]), torch.tensor([0, 1.0]), \
        torch.tensor([-1.0, 0]), torch.tensor([0, -1.0])
    strokes = torch.zeros(16, 16)
    strokes[2, 3] = 1  # in the top-left 8x8 cell
    positive = stroke_embeddings(e, strokes)
    assert positive.tolist() == [[1.0, 0.0]]
    negative = torch.tensor([[0.0, 1.0]])
    maps = match_strokes(e, positive, negative, threshold=1.5)
    # top-left matches the positive exactly; top-right the negative; bottom-left is 2 from both (>= 1.5): none;
    # bottom-right is 2 from both as well: none
    assert maps[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert maps[1].tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_crop_geometry_round_trips():
    box = np.array([20.0, 10.0, 40.0, 30.0])
    m = crop_matrix(box, 64, margin=0.25)
    # the box's outer pixel edges land at margin / (1 + 2 margin) of the crop: 64 * 0.25 / 1.5
    edges = m @ np.array([[19.5, 59.5], [9.5, 39.5], [1, 1]])
    assert edges[0, 0] + 0.5 == pytest.approx(64 * 0.25 / 1.5) and edges[0, 1] + 0.5 == pytest.approx(64 * 1.25 / 1.5)
    frame = np.zeros((60, 90), np.float32)
    frame[15:35, 30:50] = 1
    back = paste(warp(frame, m, 64), m, frame.shape) > 0.5
    assert (back == frame.astype(bool)).mean() > 0.99
    assert box_map(box, m, 64)[32, 32] == 1 and box_map(box, m, 64)[2, 2] == 0
    other = crop_matrix(box + [5, -3, 10, 4], 64)
    moved = convert(warp(frame, m, 64), m, other)
    assert np.abs(moved - warp(frame, other, 64)).mean() < 0.02
    theta = torch.from_numpy(grid_theta(m, other, 64))[None]
    source = torch.from_numpy(warp(frame, m, 64))[None, None]
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 64, 64], align_corners=False)
    by_torch = torch.nn.functional.grid_sample(source, grid, align_corners=False)[0, 0].numpy()
    assert np.abs(by_torch - moved).mean() < 0.01


def moving_square_video(n=6, h=64, w=96):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 80, (1, h, w, 3), dtype=np.uint8), n, 0)
    boxes = np.full((n, 4), np.nan)
    for i in range(n):
        x = 20 + 3 * i
        frames[i, 20:44, x:x + 24] = (40, 40, 220)
        boxes[i] = (x, 20, 24, 24)
    return ArrayVideo(frames), boxes


@pytest.fixture
def checkpoint(tmp_path, model):
    return save_checkpoint(tmp_path / "m-v001.pt", model, stage="interactive", iteration=0, metrics={},
                           train_args={"crop": 64, "margin": 0.2})


def test_learned_engine_implements_the_mask_protocols(checkpoint):
    video, boxes = moving_square_video()
    boxes[5] = np.nan  # the object is absent on the last frame
    seg = learned_engine.LearnedSegmenter.from_checkpoint(checkpoint, device="cpu")
    prop = learned_engine.LearnedPropagator.from_checkpoint(checkpoint, device="cpu")
    assert seg.model is prop.model and seg.crop == 64  # loaded once per process, at its training crop size
    strokes = [Scribble(1, np.array([[30.0, 30.0], [35.0, 32.0]]), True),
               Scribble(1, np.array([[5.0, 5.0], [10.0, 5.0]]), False)]
    mask = seg.segment(video.frame(1), boxes[1], strokes)
    assert mask.dtype == bool and mask.shape == (64, 96)
    assert mask[30, 30] and mask[32, 35] and not mask[5, 5]
    approved = {1: mask}
    masks = prop.propagate(video, boxes, approved, strokes)
    assert sorted(masks) == [0, 1, 2, 3, 4]
    assert masks[1] is mask or np.array_equal(masks[1], mask)
    assert all(m.dtype == bool and m.shape == (64, 96) for m in masks.values())
    with pytest.raises(ValueError, match="finite box"):
        seg.segment(video.frame(5), boxes[5], [])


def test_propagation_without_approved_frames_seeds_each_run(checkpoint):
    video, boxes = moving_square_video()
    boxes[2] = np.nan  # two runs: 0-1 and 3-5
    prop = learned_engine.LearnedPropagator.from_checkpoint(checkpoint, device="cpu")
    masks = prop.propagate(video, boxes, {}, [])
    assert sorted(masks) == [0, 1, 3, 4, 5]


def test_load_model_is_cached_per_file_and_device(checkpoint):
    a, _ = learned_engine.load_model(checkpoint, "cpu")
    b, _ = learned_engine.load_model(str(checkpoint), "auto" if not torch.cuda.is_available() else "cpu")
    assert a is b
    with pytest.raises(FileNotFoundError, match="no such mask checkpoint"):
        learned_engine.load_model(checkpoint.parent / "missing.pt")


def test_net_config_round_trip_rejects_unknown_keys():
    data = SMALL.to_dict()
    assert NetConfig.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}) == SMALL
    with pytest.raises(ValueError, match="unknown network config"):
        NetConfig.from_dict({**data, "depth": 3})


def test_learned_engine_is_selected_by_the_mask_settings(checkpoint, monkeypatch):
    from scribblebox.models import mask_engine
    from scribblebox.models.mask_engine import MaskEngine
    from scribblebox.settings import MaskSettings

    video, boxes = moving_square_video()
    engine = MaskEngine.from_settings(MaskSettings(engine="learned", checkpoint=str(checkpoint), device="cpu"))
    approved = {0: np.zeros((64, 96), bool)}
    approved[0][20:44, 20:44] = True
    strokes = [Scribble(3, np.array([[32.0, 30.0], [36.0, 32.0]]), True)]
    result = engine.run(video, boxes, strokes, approved=approved)
    assert sorted(result.masks) == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(result.masks[0], approved[0]) and result.masks[3][30, 32]
    assert sorted(result.approved) == [0, 3]
    monkeypatch.setattr(mask_engine, "checkpoint_path", lambda masks: None)  # an install without the shipped one
    with pytest.raises(ValueError, match="needs masks.checkpoint"):
        MaskEngine.from_settings(MaskSettings(engine="learned"))


def test_learned_walks_between_two_start_frames_run_back_to_back():
    """Both walks of one segment run one after the other, so at most one segment's frames wait to be fused."""
    from scribblebox.models.fusion import by_segment
    from scribblebox.models.propagation import plan_chains

    chains = plan_chains(np.ones((12, 4)), [2, 9])
    assert by_segment(chains) == [(2, -1, 0), (2, 1, 8), (9, -1, 3), (9, 1, 11)]


def test_strokes_are_not_carried_when_they_match_cells_far_from_them():
    """A collapsed embedding (every cell alike) would label the whole next frame as stroke: the self-check on the
    stroked frame catches it; an embedding that tells cells apart passes."""
    strokes = torch.zeros(64, 64)
    strokes[4:8, 4:20] = 1  # cells (0, 0..2) at stride 8
    collapsed = torch.nn.functional.normalize(torch.ones(16, 8, 8) + 0.01 * torch.randn(16, 8, 8), dim=0)
    distinct = torch.nn.functional.normalize(torch.randn(64, 8, 8), dim=0)
    for embedding, expected in ((collapsed, 1.0), (distinct, 0.0)):
        positive, negative = stroke_embeddings(embedding, strokes), stroke_embeddings(embedding, torch.zeros(64, 64))
        rate = learned_engine.false_match_rate(embedding, strokes, positive, negative, learned_engine.MATCH_THRESHOLD)
        assert rate == pytest.approx(expected, abs=0.05)
    assert learned_engine.false_match_rate(collapsed, torch.ones(64, 64), positive, negative, 0.5) == 0.0


def test_learned_engine_keeps_an_approved_mask_that_already_satisfies_its_strokes(checkpoint, monkeypatch):
    from scribblebox.models.networks.learned_engine import LearnedMaskEngine

    video, boxes = moving_square_video()
    engine = LearnedMaskEngine.from_checkpoint(checkpoint, device="cpu")
    strokes = [Scribble(2, np.array([[32.0, 30.0], [36.0, 32.0]]), True)]
    first = engine.run(video, boxes, strokes)
    monkeypatch.setattr(engine.segmenter, "segment", lambda *a, **k: pytest.fail("re-segmented a satisfied frame"))
    again = engine.run(video, boxes, strokes, previous=first)
    assert again.approved[2] is first.approved[2]
    more = strokes + [Scribble(2, np.array([[30.0, 20.0], [30.0, 24.0]]), False)]  # new stroke: segment again
    with pytest.raises(pytest.fail.Exception, match="re-segmented"):
        engine.run(video, boxes, more, previous=first)
