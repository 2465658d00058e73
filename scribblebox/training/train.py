"""`scribblebox train`: one stage of the seed's recipe per run, resumable, with its config and metrics in every file.

    stage 1  --stage synthetic     encoder + propagation decoder on synthetic pairs (affine + object composition)
    stage 2  --stage video         the same nets on 3-frame clips (--init the stage-1 checkpoint)
    stage 3  --stage interactive   encoder frozen: interactive decoder, scribble embedding head and the propagation
                                   decoder's scribble inputs (--init the stage-2 checkpoint)

SGD with momentum 0.9 and the CLR triangular2 schedule (1e-5..1e-3, 4 cycles over the run). Every --save-every
iterations `<out>/<stage>-state.pt` is rewritten atomically (weights + optimizer: `--resume` it); at the end the
held-out sequences are measured and `<out>/scribblebox-<size>-<stage>-vNNN.pt` (weights, config, metrics) is written.
Samples are pure functions of (seed, index), so a resumed run sees the same data it would have seen.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scribblebox.models.networks.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, versioned_path
from scribblebox.models.networks.config import net_config
from scribblebox.models.networks.crops import MARGIN
from scribblebox.models.networks.model import ScribbleBoxModel, count_parameters

from .clips import VideoFrames, list_folder, load_bank, synthetic_pair, video_clip
from .interactions import interaction_sample
from .options import TrainOptions, add_train_arguments
from .schedule import clr_triangular2, set_lr
from .steps import STEPS, to_device

log = logging.getLogger(__name__)

GENERATORS = {"synthetic": synthetic_pair, "video": video_clip, "interactive": interaction_sample}
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
CLIP_NORM = 5.0
VAL_SEED = 1_000_003


class StageData(Dataset):
    """Sample i of a stage is generated from numpy's Generator seeded with (seed, i): repeatable and resumable."""

    def __init__(self, bank: list[VideoFrames], stage: str, crop: int, seed: int, margin: float = MARGIN) -> None:
        if not bank:
            raise ValueError("no annotated sequences to sample from: check --data and --holdout")
        self.bank, self.generate, self.crop, self.seed, self.margin = bank, GENERATORS[stage], crop, seed, margin

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.generate(self.bank, np.random.default_rng([self.seed, index]), self.crop, self.margin)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device: use --device cpu (or auto)")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def split_sequences(root: str, holdout: tuple[str, ...]) -> tuple[list[str], list[str]]:
    names = list_folder(root)
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise ValueError(f"--holdout names {unknown} are not sequences of {root}; known: {names}")
    train = [n for n in names if n not in holdout]
    if not train:
        raise ValueError(f"{root}: no sequences left for training (found {len(names)}, all held out or none)")
    return train, list(holdout)


def trainable(model: ScribbleBoxModel, stage: str) -> list[torch.nn.Parameter]:
    """Stages 1-2: encoder + propagation decoder. Stage 3: the encoder is frozen, the rest trains."""
    if stage == "interactive":
        model.freeze_encoder(True)
        modules = [model.interactive, model.scribble, model.propagation]
    else:
        modules = [model.encoder, model.propagation]
    return [p for m in modules for p in m.parameters()]


def loader(data: StageData, start: int, stop: int, batch: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(data, batch_size=batch, sampler=range(start * batch, stop * batch), num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                      timeout=300 if workers else 0)  # a stuck data process fails the run instead of hanging it


def build(options: TrainOptions, device: torch.device) -> tuple[ScribbleBoxModel, dict[str, Any] | None]:
    """The model (fresh, from --init or from --resume) and the resumed payload if any."""
    config = net_config(options.size)
    torch.manual_seed(options.seed)
    if options.resume:
        payload = read_checkpoint(options.resume, device)
        if payload["stage"] != options.stage:
            raise ValueError(f"{options.resume} is a {payload['stage']!r} run; --resume continues the same stage "
                             f"({options.stage!r}): use --init to start a new stage from it")
        model, _ = load_checkpoint(options.resume, config, device)
        return model, payload
    if options.init:
        model, payload = load_checkpoint(options.init, config, device)
        log.info("starting from %s (stage %s, iteration %d)", options.init, payload["stage"], payload["iteration"])
        return model, None
    if options.stage != "synthetic":
        log.warning("stage %s without --init: training from random weights (give the previous stage's checkpoint)",
                    options.stage)
    return ScribbleBoxModel(config).to(device), None


@torch.no_grad()
def evaluate(model: ScribbleBoxModel, options: TrainOptions, bank: list[VideoFrames], device: torch.device,
             ) -> dict[str, float]:
    """Mean metrics over `val_samples` fixed held-out samples (the same ones in every run with this seed)."""
    if not bank or options.val_samples == 0:
        return {}
    model.eval()
    data = StageData(bank, options.stage, options.crop, options.seed + VAL_SEED)
    batches = DataLoader(data, batch_size=options.batch, sampler=range(options.val_samples))
    sums: dict[str, float] = {}
    for batch in batches:
        _, metrics = STEPS[options.stage](model, to_device(batch, device))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v * len(next(iter(batch.values())))
    model.train()
    return {k: round(v / options.val_samples, 4) for k, v in sums.items()}


def train(options: TrainOptions) -> Path:
    """Run one stage; returns the final versioned checkpoint."""
    device = resolve_device(options.device)
    if options.workers:
        # Before any OpenCV call: its thread pool does not survive fork(), and the data processes are forked.
        cv2.setNumThreads(0)
    if options.threads:
        torch.set_num_threads(options.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_names, held_names = split_sequences(options.data, options.holdout)
    workers = max(options.workers, 1) * 2
    bank = load_bank(options.data, train_names, options.frame_side, workers)
    held = load_bank(options.data, held_names, options.frame_side, workers) if held_names else []
    model, resumed = build(options, device)
    params = trainable(model, options.stage)
    optimizer = torch.optim.SGD(params, lr=options.lr_min, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    start, ema = 0, {}
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        start, ema = resumed["iteration"], dict(resumed["metrics"].get("train", {}))
        log.info("resuming %s at iteration %d of %d", options.resume, start, options.iters)
    model.train()
    out = Path(options.out)
    args = {**options.__dict__, "holdout": list(options.holdout), "train_sequences": train_names,
            "margin": MARGIN, "torch": str(torch.__version__), "device": str(device)}
    log.info("%s: %d trainable of %d parameters (%s), %d training sequences, device %s", options.stage,
             sum(p.numel() for p in params), count_parameters(model), options.size, len(bank), device)
    data = StageData(bank, options.stage, options.crop, options.seed)
    started, done = time.perf_counter(), start
    for it, batch in enumerate(loader(data, start, options.iters, options.batch, options.workers, device), start):
        set_lr(optimizer, clr_triangular2(it, options.iters, options.cycles, options.lr_min, options.lr_max))
        loss, metrics = STEPS[options.stage](model, to_device(batch, device))
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the loss became {loss.item()} at iteration {it}: lower --lr-max or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        ema = {k: v if k not in ema else 0.9 * ema[k] + 0.1 * v for k, v in metrics.items()}
        done = it + 1
        if done % options.log_every == 0 or done == options.iters:
            progress(options, done, start, started, ema, optimizer.param_groups[0]["lr"])
        if done % options.save_every == 0 and done < options.iters:
            save_checkpoint(out / f"{options.stage}-state.pt", model, stage=options.stage, iteration=done,
                            metrics={"train": ema}, train_args=args, optimizer=optimizer)
    seconds = time.perf_counter() - started
    metrics = {"train": {k: round(v, 4) for k, v in ema.items()}, "val": evaluate(model, options, held, device),
               "iterations": done, "seconds": round(seconds, 1),
               "samples_per_second": round((done - start) * options.batch / max(seconds, 1e-9), 1)}
    save_checkpoint(out / f"{options.stage}-state.pt", model, stage=options.stage, iteration=done,
                    metrics=metrics, train_args=args, optimizer=optimizer)
    final = save_checkpoint(versioned_path(out, f"scribblebox-{options.size}-{options.stage}"), model,
                            stage=options.stage, iteration=done, metrics=metrics, train_args=args)
    log.info("%s done: %s -> %s", options.stage, metrics, final)
    return final


def progress(options: TrainOptions, done: int, start: int, started: float, ema: dict[str, float], lr: float) -> None:
    rate = (done - start) / max(time.perf_counter() - started, 1e-9)
    eta = (options.iters - done) / max(rate, 1e-9)
    values = " ".join(f"{k} {v:.3f}" for k, v in ema.items())
    log.info("%s %d/%d %s lr %.2e | %.2f it/s, ETA %dm%02ds", options.stage, done, options.iters, values, lr, rate,
             eta // 60, eta % 60)


def train_command(settings: Any, args: argparse.Namespace) -> int:
    """`scribblebox train ...` (settings are not used: a training run is described by its arguments alone)."""
    final = train(TrainOptions.from_args(args))
    sys.stdout.write(f"{final}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m scribblebox.training.train ...`: the same command without the rest of the CLI (bare GPU images)."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="scribblebox-train", description=__doc__,
                                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return train_command(None, args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
