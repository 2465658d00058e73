"""One validated configuration: `config/defaults.yaml`, an optional override file, then environment variables.

Unknown keys are rejected so that a typo in a team's config fails loudly instead of being ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class TrackingSettings:
    tracker: str = "csrt"
    nano_backbone: str | None = None
    nano_head: str | None = None
    tolerance: float = 0.9
    work_size: int = 480
    lost_frames: int = 5


@dataclass(frozen=True)
class MaskSettings:
    engine: str = "classical"
    work_size: int = 256
    scribble_window: int = 10
    flow: str = "medium"  # engine "classical": DIS optical flow preset, medium | fast | ultrafast
    checkpoint: str | None = None
    device: str = "auto"
    sam2_checkpoint: str | None = None  # engine "sam2": a SAM2 checkpoint file you supply ("random": tests only)
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"  # engine "sam2": the sam2 package config it matches


@dataclass(frozen=True)
class ServerSettings:
    data_dir: str = "var"
    max_download_mb: int = 2048
    max_request_mb: int = 64
    default_frame_rate: float = 24.0
    job_lease_s: float = 60.0
    predict_deadline_s: float = 40.0  # interactive answers on long videos: what is ready by then; the rest is a job
    window_frames: int = 300  # longer videos: only this many frames around the edit are computed interactively


@dataclass(frozen=True)
class TrainingSettings:
    """`fit`: fine-tuning the learned mask engine on a project's approved masks (Label Studio START_TRAINING)."""

    base_checkpoint: str | None = None  # None: masks.checkpoint
    fit_iters: int = 200
    fit_batch: int = 4
    fit_min_masks: int = 4
    fit_max_masks: int = 400
    fit_holdout: float = 0.2
    fit_min_gain: float = 0.0
    fit_lr_max: float = 0.001
    fit_train_encoder: bool = False
    fit_every_annotations: int = 0  # 0: off


@dataclass(frozen=True)
class Settings:
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    masks: MaskSettings = field(default_factory=MaskSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)


# Environment variables that override single settings: name -> (section, key).
ENV_OVERRIDES = {
    "SCRIBBLEBOX_TRACKER": ("tracking", "tracker"),
    "SCRIBBLEBOX_NANO_BACKBONE": ("tracking", "nano_backbone"),
    "SCRIBBLEBOX_NANO_HEAD": ("tracking", "nano_head"),
    "SCRIBBLEBOX_TOLERANCE": ("tracking", "tolerance"),
    "SCRIBBLEBOX_DATA_DIR": ("server", "data_dir"),
    "SCRIBBLEBOX_MASK_ENGINE": ("masks", "engine"),
    "SCRIBBLEBOX_MASK_CHECKPOINT": ("masks", "checkpoint"),
    "SCRIBBLEBOX_MASK_FLOW": ("masks", "flow"),
    "SCRIBBLEBOX_DEVICE": ("masks", "device"),
    "SCRIBBLEBOX_SAM2_CHECKPOINT": ("masks", "sam2_checkpoint"),
    "SCRIBBLEBOX_SAM2_CONFIG": ("masks", "sam2_config"),
    "SCRIBBLEBOX_JOB_LEASE_S": ("server", "job_lease_s"),
    "SCRIBBLEBOX_PREDICT_DEADLINE_S": ("server", "predict_deadline_s"),
}


def _merge(section_cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(section_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    typed = {}
    for key, value in values.items():
        kind = known[key].type
        if value is not None and "float" in str(kind):
            value = float(value)
        elif value is not None and "int" in str(kind):
            value = int(value)
        typed[key] = value
    return section_cls(**typed)


def load_settings(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Settings:
    """Defaults, then the YAML at `path` (or $SCRIBBLEBOX_CONFIG), then the environment overrides."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, dict[str, Any]] = yaml.safe_load(resources.files("scribblebox.config").joinpath("defaults.yaml").read_text())
    path = path or env.get("SCRIBBLEBOX_CONFIG")
    if path:
        override = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(override, dict):
            raise ValueError(f"{path}: expected a mapping of sections")
        for section, values in override.items():
            if section not in raw:
                raise ValueError(f"{path}: unknown section {section!r}; known: {sorted(raw)}")
            raw[section].update(values or {})
    for name, (section, key) in ENV_OVERRIDES.items():
        if env.get(name):
            raw[section][key] = env[name]
    return Settings(
        tracking=_merge(TrackingSettings, raw["tracking"], "tracking"),
        masks=_merge(MaskSettings, raw["masks"], "masks"),
        server=_merge(ServerSettings, raw["server"], "server"),
        training=_merge(TrainingSettings, raw["training"], "training"),
    )
