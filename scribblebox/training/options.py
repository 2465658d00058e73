"""`scribblebox train` options: the argparse arguments and the validated dataclass (no torch import here, so the
CLI can build its parser without it)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

STAGES = ("synthetic", "video", "interactive")


@dataclass(frozen=True)
class TrainOptions:
    stage: str
    data: str
    out: str
    holdout: tuple[str, ...] = ()
    size: str = "small"
    crop: int = 256
    iters: int = 1000
    batch: int = 8
    resume: str | None = None
    init: str | None = None
    device: str = "auto"
    workers: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default)
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    val_samples: int = 64
    max_side: int = 0  # 0: max(480, 2 * crop)
    lr_min: float = 1e-5
    lr_max: float = 1e-3
    cycles: int = 4

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {list(STAGES)}, got {self.stage!r}")
        if self.crop < 32 or self.crop % 16:
            raise ValueError(f"--crop must be a multiple of 16 and >= 32 (the seed uses 256 or 512), got {self.crop}")
        if self.iters < 1 or self.batch < 2:
            raise ValueError(f"need --iters >= 1 and --batch >= 2 (batch norm), got {self.iters} and {self.batch}")
        if self.resume and self.init:
            raise ValueError("give --resume (continue this stage's run) or --init (start from an earlier stage), not both")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.log_every < 1 or self.save_every < 1 or min(self.val_samples, self.workers, self.threads) < 0:
            raise ValueError("--log-every and --save-every must be >= 1, --val-samples, --workers, --threads >= 0")

    @property
    def frame_side(self) -> int:
        return self.max_side or max(480, 2 * self.crop)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["holdout"] = tuple(s for s in (args.holdout or "").split(",") if s)
        return cls(**values)


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `train` sub-command's arguments."""
    p.add_argument("--stage", required=True, choices=STAGES,
                   help="synthetic (stage 1), video (stage 2), interactive (stage 3: encoder frozen)")
    p.add_argument("--data", required=True, help="DAVIS-format folder: <seq>/frames/*.jpg + <seq>/masks/*.png")
    p.add_argument("--holdout", default="", help="comma-separated sequences kept out of training, used for validation")
    p.add_argument("--size", default="small", choices=("small", "paper"), help="network size (paper: for GPUs)")
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels (multiple of 16; the seed: 256 or 512)")
    p.add_argument("--iters", type=int, default=1000, help="iterations of this stage (the CLR schedule spans them)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", required=True, help="folder for the resumable state and the final versioned checkpoint")
    p.add_argument("--resume", help="a <stage>-state.pt of this stage: continue that run where it stopped")
    p.add_argument("--init", help="a checkpoint of an earlier stage: start from its weights")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=0, help="data loader processes (0: in the training process)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default; 1 on busy shared cores, "
                   "where spinning threads slow every operation down)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50, help="a progress line every N iterations")
    p.add_argument("--save-every", type=int, default=500, help="a resumable state every N iterations")
    p.add_argument("--val-samples", type=int, default=64, help="held-out samples measured at the end (0: none)")
    p.add_argument("--max-side", type=int, default=0, help="frames are shrunk to this long side in memory "
                   "(0: max(480, 2 x crop))")
    p.add_argument("--lr-min", type=float, default=1e-5)
    p.add_argument("--lr-max", type=float, default=1e-3)
    p.add_argument("--cycles", type=int, default=4, help="CLR triangular2 cycles over the run")
    return p
