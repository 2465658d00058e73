"""The checkpoint shipped in the package: small, strict-loadable, what `masks.engine: learned` uses by default,
held-out sequences really held out, and a segmenter that finds an object from its box."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scribblebox.models.mask_engine import MaskEngine, checkpoint_path  # noqa: E402
from scribblebox.models.networks.checkpoint import load_checkpoint  # noqa: E402
from scribblebox.models.networks.learned_engine import LearnedMaskEngine  # noqa: E402
from scribblebox.settings import MaskSettings  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "weights" / "scribblebox-small.pt"


def test_shipped_checkpoint_is_small_strict_and_documented():
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 5 * 2**20, "ship a few MB at most"
    model, payload = load_checkpoint(SHIPPED)
    assert model.config.name == "small" and payload["stage"] == "interactive"
    args = payload["train_args"]
    assert not set(args["holdout"]) & set(args["train_sequences"]), "held-out sequences must not be trained on"
    card = (SHIPPED.parent / "MODEL_CARD.md").read_text()
    assert all(name in card for name in args["holdout"]) and str(args["crop"]) in card


def test_learned_engine_defaults_to_the_shipped_checkpoint():
    assert Path(checkpoint_path(MaskSettings(engine="learned"))).resolve() == SHIPPED
    assert checkpoint_path(MaskSettings(engine="learned", checkpoint="/x/own.pt")) == "/x/own.pt"
    assert isinstance(MaskEngine.from_settings(MaskSettings(engine="learned", device="cpu")), LearnedMaskEngine)


def test_shipped_network_segments_an_object_from_its_box():
    """A textured disc on another texture, in a loose box: filling the box would score IoU 0.50, a random network
    about that or 0; the trained one finds the disc."""
    from scribblebox.models.video import ArrayVideo

    rng = np.random.default_rng(0)
    frame = (rng.integers(0, 60, (160, 200, 3)) + np.array([20, 90, 20])).astype(np.uint8)
    yy, xx = np.mgrid[:160, :200]
    disc = (yy - 80) ** 2 + (xx - 100) ** 2 < 40**2
    frame[disc] = (rng.integers(0, 60, (int(disc.sum()), 3)) + np.array([40, 40, 190])).astype(np.uint8)
    engine = MaskEngine.from_settings(MaskSettings(engine="learned", device="cpu"))
    mask = engine.run(ArrayVideo(frame[None]), np.array([[50.0, 30.0, 100.0, 100.0]]), []).masks[0]
    iou = np.count_nonzero(mask & disc) / max(np.count_nonzero(mask | disc), 1)
    assert iou > 0.8, iou
