"""The `scribblebox` command: thin sub-commands over the same engine."""
from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scribblebox", description=__doc__)
    p.add_argument("--config", help="YAML file overriding config/defaults.yaml")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the ML backend (Label Studio protocol) with gunicorn")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--dev", action="store_true", help="Flask's single-process server instead of gunicorn")

    t = sub.add_parser("track", help="Curve-VOT box track of one object in a video file or frame folder")
    t.add_argument("video")
    t.add_argument("--box", required=True, help="x,y,w,h in pixels on --frame")
    t.add_argument("--frame", type=int, default=0, help="0-based frame of --box")
    t.add_argument("--tracker", help="csrt | kcf | nano (overrides the config)")
    t.add_argument("--tolerance", type=float, help="IoU tolerance of the keyframe curve (default 0.9)")
    t.add_argument("--output", "-o", help="write the JSON here instead of stdout")

    b = sub.add_parser("bench-track", help="box-track benchmark with a simulated annotator on a DAVIS-format folder")
    b.add_argument("root", help="folder of <seq>/frames/*.jpg and <seq>/masks/*.png")
    b.add_argument("--sequences", help="comma-separated subset")
    b.add_argument("--max-frames", type=int, default=0, help="cut each sequence to this many frames (0: all)")
    b.add_argument("--methods", default="interp,csrt-loop,curvevot")
    b.add_argument("--output", "-o", help="write per-sequence JSON here")
    e = sub.add_parser("eval", help="whole-system evaluation (box track + scribble rounds) with a simulated annotator on a DAVIS-format folder")
    e.add_argument("root", help="folder of <seq>/frames/*.jpg and <seq>/masks/*.png")
    e.add_argument("--sequences", help="comma-separated subset")
    e.add_argument("--max-frames", type=int, default=0, help="cut each sequence to this many frames (0: all)")
    e.add_argument("--rounds", type=int, default=8, help="scribble rounds after round 0 (the box track alone)")
    e.add_argument("--output", "-o", help="write per-sequence and overall JSON here")
    e.add_argument("--plot", help="write a PNG of J&F versus rounds here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .settings import load_settings

    try:
        settings = load_settings(args.config)
        if args.command == "serve":
            from .backend.server import serve

            return serve(settings, host=args.host, port=args.port, workers=args.workers, dev=args.dev)
        if args.command == "track":
            from .commands import track_command

            return track_command(settings, args)
        if args.command == "bench-track":
            from .evaluation.boxes import bench_command

            return bench_command(settings, args)
        if args.command == "eval":
            from .evaluation.masks import eval_command

            return eval_command(settings, args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        logging.getLogger("scribblebox").error("%s", err)
        print(f"scribblebox: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
