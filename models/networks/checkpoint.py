"""Checkpoints that say how to rebuild themselves: the network config, the weights, the training stage, iteration,
metrics and arguments (and, for resumable ones, the optimizer and schedule state), written atomically
(temporary file + rename, so a crash never leaves a half-written model) under versioned names (name-v001.pt, ...).
Loading is strict: a file whose config or weights do not match what the caller expects is refused.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .config import NetConfig
from .model import ScribbleBoxModel

FORMAT = 1


def save_checkpoint(path: str | os.PathLike, model: ScribbleBoxModel, *, stage: str, iteration: int,
                    metrics: dict[str, Any], train_args: dict[str, Any] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, rng: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write atomically; half=True stores float weights as float16 (half the size, for shipping)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state, "stage": stage,
               "iteration": int(iteration), "metrics": metrics, "train_args": train_args or {},
               "optimizer": optimizer.state_dict() if optimizer is not None else None, "rng": rng}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload (weights only: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (train one with `scribblebox train`)")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a ScribbleBox checkpoint of format {FORMAT}")
    return payload


def load_checkpoint(path: str | os.PathLike, config: NetConfig | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[ScribbleBoxModel, dict[str, Any]]:
    """(model in eval mode, payload). With `config`, the file must have been trained with exactly that config."""
    payload = read_checkpoint(path, map_location)
    stored = NetConfig.from_dict(payload["config"])
    if config is not None and stored != config:
        raise ValueError(f"{path}: the checkpoint's network config {stored} differs from the expected {config}: "
                         "use a checkpoint of that size or pick the size it was trained with")
    model = ScribbleBoxModel(stored)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the {stored.name!r} network ({err})") from None
    return model.to(map_location).eval(), payload


def versioned_path(folder: str | os.PathLike, name: str) -> Path:
    """The next free `name-vNNN.pt` in folder (one above the highest present)."""
    latest = latest_version(folder, name)
    number = 0 if latest is None else int(re.search(r"-v(\d+)\.pt$", latest.name).group(1))
    return Path(folder) / f"{name}-v{number + 1:03d}.pt"


def latest_version(folder: str | os.PathLike, name: str) -> Path | None:
    """The highest-numbered `name-vNNN.pt` in folder, or None."""
    pattern = re.compile(rf"^{re.escape(name)}-v(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in Path(folder).glob(f"{name}-v*.pt") if (m := pattern.match(p.name))]
    return max(found)[1] if found else None
