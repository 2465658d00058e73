"""The whole learned mask engine's network: one encoder shared by the propagation, interactive and scribble nets."""
from __future__ import annotations

from torch import nn

from .config import NetConfig
from .decoders import interactive_decoder, propagation_decoder
from .encoder import Encoder
from .interactive_net import InteractiveNet
from .propagation_net import PropagationNet
from .scribble_net import EmbeddingHead, ScribbleNet


class ScribbleBoxModel(nn.Module):
    """State dict keys: encoder.*, propagation.decoder.*, interactive.decoder.*, scribble.head.*"""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.propagation = PropagationNet(self.encoder, propagation_decoder(config))
        self.interactive = InteractiveNet(self.encoder, interactive_decoder(config))
        _, c8, c16 = config.widths
        self.scribble = ScribbleNet(self.encoder, EmbeddingHead(c8, c16, config.embedding))

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stage 3 of the seed: the encoder's weights (and batch-norm statistics) stay as stage 2 left them."""
        self.encoder.requires_grad_(not frozen)
        self.encoder.train(not frozen and self.training)
        self._frozen = frozen

    def train(self, mode: bool = True) -> ScribbleBoxModel:
        super().train(mode)
        if getattr(self, "_frozen", False):
            self.encoder.eval()
        return self


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
