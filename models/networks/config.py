"""Network sizes: one frozen dataclass per model, stored inside every checkpoint so a file says how to rebuild itself."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

STRIDE = 16  # the encoder's deepest features are 1/16 of the crop: crop sides must be multiples of this


@dataclass(frozen=True)
class NetConfig:
    """Widths and depths. `widths`/`blocks`: the encoder stages at strides 4, 8, 16 (after a stride-2 stem);
    `decoder`: the three refinement modules' output channels (the seed's are 224, 224, 128)."""

    name: str
    stem: int
    widths: tuple[int, int, int]
    blocks: tuple[int, int, int]
    decoder: tuple[int, int, int]
    gc_kernel: int  # the global-convolution block's k (k x 1 + 1 x k) on the joint reference/target features
    embedding: int  # scribble embedding dimensions
    in_channels: int = 4  # BGR + one mask channel

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown network config key(s) {unknown}: the checkpoint was written by another version")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


SIZES: dict[str, NetConfig] = {
    # ~0.9M parameters, ~0.6 GMAC per 256x256 propagation step: trains and runs on 2 CPU cores.
    "small": NetConfig(name="small", stem=16, widths=(24, 40, 80), blocks=(1, 1, 2), decoder=(64, 48, 16),
                       gc_kernel=3, embedding=32),
    # The seed's decoder widths on a ResNet-like encoder: for GPU users.
    "paper": NetConfig(name="paper", stem=64, widths=(128, 256, 512), blocks=(2, 3, 4), decoder=(224, 224, 128),
                       gc_kernel=7, embedding=128),
}


def net_config(size: str) -> NetConfig:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown network size {size!r}; known: {sorted(SIZES)}") from None
