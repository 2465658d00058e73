"""What limits J&F: the mask engine given PERFECT masks (ground truth) on k evenly spaced frames, no strokes.

Per sequence: the eval's box stage (Curve-VOT + box corrections until IoU >= 0.7 everywhere, as `scribblebox eval`),
then for each k the engine propagates from the ground-truth masks of frames round((2i + 1) n / 2k), i < k, given as
approved masks (as saved brush edits reach it). Round 0 (the box track alone) is printed beside. If J&F with 4
perfect frames is under the target, better strokes on 4 frames cannot reach it: the propagation is the limit.
    .venv/bin/python scripts/bench_oracle.py --sequences elephant,surf --frames 4,8 [--engine classical] [--json out.json]
Exit code 2 when the data is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from scribblebox.evaluation.boxes import CurveVotMethod
from scribblebox.evaluation.davis import list_sequences, load_sequence
from scribblebox.evaluation.masks import box_stage, gt_masks, score
from scribblebox.models.mask_engine import MaskEngine
from scribblebox.settings import load_settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train"


def spread(n: int, k: int) -> list[int]:
    """k frames evenly spread over n: the middles of k equal parts."""
    return sorted({min(int(round((2 * i + 1) * n / (2 * k))), n - 1) for i in range(k)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DATA))
    parser.add_argument("--sequences", default="", help="comma-separated (default: every sequence under --root)")
    parser.add_argument("--frames", default="4,8", help="comma-separated k: perfect frames per video")
    parser.add_argument("--engine", default=None, help="masks.engine (default: the configured one)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"{args.root}: no DAVIS-format data here", file=sys.stderr)
        return 2
    settings = load_settings(None)
    masks_settings = dataclasses.replace(settings.masks, engine=args.engine) if args.engine else settings.masks
    engine = MaskEngine.from_settings(masks_settings)
    ks = [int(k) for k in args.frames.split(",")]
    names = [s for s in args.sequences.split(",") if s] or list_sequences(args.root)
    rows = []
    print(f"{'sequence':<18}{'frames':>7}{'r0':>8}" + "".join(f"{'gt' + str(k):>8}" for k in ks), flush=True)
    for name in names:
        seq = load_sequence(args.root, name, 0)
        _, boxes = box_stage(CurveVotMethod(settings), seq.video, seq.gt)
        n = seq.video.num_frames
        gts = gt_masks(args.root, name, n)
        row = {"sequence": name, "frames": n}
        t0 = time.perf_counter()
        j, f = score(engine.run(seq.video, boxes, []).masks, gts)
        row["r0"] = float((j.mean() + f.mean()) / 2)
        for k in ks:
            approved = {i: gts[i] for i in spread(n, k)}
            j, f = score(engine.run(seq.video, boxes, [], approved=approved).masks, gts)
            row[f"gt{k}"] = float((j.mean() + f.mean()) / 2)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name:<18}{n:>7}{row['r0']:>8.3f}" + "".join(f"{row[f'gt{k}']:>8.3f}" for k in ks), flush=True)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ["r0"] + [f"gt{k}" for k in ks]}
    print(f"{'mean':<18}{sum(r['frames'] for r in rows):>7}{mean['r0']:>8.3f}"
          + "".join(f"{mean[f'gt{k}']:>8.3f}" for k in ks))
    if args.json:
        Path(args.json).write_text(json.dumps({"sequences": rows, "mean": mean}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
