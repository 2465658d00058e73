"""Box tracks on long real sequences: each DAVIS sequence played forwards, backwards, forwards... (ping-pong).

DAVIS clips are 25-91 frames; OTB/VOT tracks run for hundreds. Looping a real clip keeps its real appearance changes
and ground truth on every frame, so the `scribblebox bench-track` annotator measures whether a track from one box
survives several hundred frames (a track ended while the object is in view costs the annotator boxes). The looped
sequences are symlinks in a temporary folder. --continuity 0 scores boxes against the first frame's template only
(the engine before the recent-template match, models/trackers/confidence.py): the baseline of docs/benchmarks.md.
    .venv/bin/python scripts/bench_long_tracks.py --frames 400 [--sequences hike,lucia] [--continuity 0] [-o out.json]
Exit code 2 when the data is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from scribblebox.evaluation.boxes import format_table, overall, run_benchmark
from scribblebox.evaluation.davis import list_sequences
from scribblebox.models.trackers import confidence
from scribblebox.settings import load_settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train"


def ping_pong(n: int, length: int) -> list[int]:
    """Frame order 0..n-1, n-2..1, 0..n-1, ... cut to `length` (no frame shown twice in a row at the turns)."""
    cycle = list(range(n)) + list(range(n - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(length)] if n > 1 else [0] * length


def loop_sequence(source: Path, target: Path, length: int) -> bool:
    """`target`/frames and /masks as symlinks to `source`'s files in ping-pong order; False if they do not pair up."""
    frames = sorted((source / "frames").glob("*.jpg"))
    masks = sorted((source / "masks").glob("*.png"))
    if not frames or len(frames) != len(masks):
        return False
    for kind, files, suffix in (("frames", frames, ".jpg"), ("masks", masks, ".png")):
        folder = target / kind
        folder.mkdir(parents=True)
        for i, src in enumerate(ping_pong(len(files), length)):
            (folder / f"{i:05d}{suffix}").symlink_to(files[src].resolve())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--frames", type=int, default=400, help="length of each looped sequence")
    parser.add_argument("--sequences", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--continuity", type=float, default=confidence.CONTINUITY,
                        help=f"weight of the recent-template match (shipped {confidence.CONTINUITY}; 0 = baseline)")
    parser.add_argument("--json", "-o", type=Path, help="write the per-sequence results here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no DAVIS-format data at {args.data}", file=sys.stderr)
        return 2
    confidence.CONTINUITY = args.continuity
    names = [s for s in args.sequences.split(",") if s] or list_sequences(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        names = [n for n in names if loop_sequence(args.data / n, Path(tmp) / n, args.frames)]
        results = run_benchmark(load_settings(), tmp, names, ["curvevot"])
    print(f"{len(names)} DAVIS sequences looped to {args.frames} frames, continuity {args.continuity}")
    print(format_table(results, ["curvevot"]))
    if args.json:
        doc = {"frames": args.frames, "continuity": args.continuity, "sequences": [r.to_dict() for r in results],
               "overall": overall(results, ["curvevot"])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
