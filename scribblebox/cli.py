"""The `scribblebox` command: thin sub-commands over the same engine."""
from __future__ import annotations

import argparse
import logging
import os
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
    t.add_argument("--progress", action="store_true", help="progress bar on stderr (shown anyway when stderr is a terminal)")

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
    iv = sub.add_parser("import-video", help="upload a video and its frames to Label Studio as one mask task")
    iv.add_argument("video", help=".mp4 or .webm file")
    iv.add_argument("--label-studio", metavar="URL", help="Label Studio URL (default: $LABEL_STUDIO_URL)")
    iv.add_argument("--api-key", help="Label Studio token, legacy or personal access token (default: $LABEL_STUDIO_API_KEY)")
    iv.add_argument("--project", type=int, required=True, help="project id; its labeling config: config/label_studio/video_masks.xml")
    iv.add_argument("--every", type=int, default=1, help="one frame image every N video frames (default 1: all)")
    c = sub.add_parser("cvat", help="whole-video tools on a CVAT task through cvat-sdk (needs the 'cvat' extra)")
    c.add_argument("--server-host", help="CVAT URL, e.g. http://localhost:8080 (default: the cvat-cli profile)")
    c.add_argument("--server-port", type=int)
    c.add_argument("--auth", help="USER[:PASS] (password from $PASS or a prompt); or set CVAT_ACCESS_TOKEN")
    c.add_argument("--profile", help="a profile saved by cvat-cli")
    c.add_argument("--org", help="organization slug")
    c.add_argument("--insecure", action="store_true", help="do not check the server's TLS certificate")
    c.add_argument("--tracker", help="csrt | kcf | nano (overrides the config)")
    cs = c.add_subparsers(dest="cvat_command", required=True)
    ct = cs.add_parser("track", help="Curve-VOT track over the whole task from the boxes drawn, written back as a track")
    ct.add_argument("--task", type=int, required=True)
    ct.add_argument("--label", help="label of the boxes to start from (needed when rectangles of several labels exist)")
    ct.add_argument("--track-id", type=int, help="start from this rectangle track's keyframes instead of shapes")
    ct.add_argument("--keep-source", action="store_true", help="keep the boxes/track the new track was made from")
    cp = cs.add_parser("propagate", help="one mask per frame over a range, from the object's mask on --frame")
    cp.add_argument("--task", type=int, required=True)
    cp.add_argument("--frame", type=int, required=True, help="a frame with the object's mask (0-based task frame)")
    cp.add_argument("--label", help="the object's label (needed when --frame has masks of several labels)")
    cp.add_argument("--approved", help="more frames whose masks are approved, comma-separated")
    cp.add_argument("--first", type=int, help="first frame to write (default 0)")
    cp.add_argument("--last", type=int, help="last frame to write, inclusive (default: the task's last)")
    cp.add_argument("--negative-label", help="'points' of this label are negative clicks")
    cp.add_argument("--replace", action="store_true", help="delete earlier semi-auto masks of the label in the range")
    wk = sub.add_parser("worker", help="run background jobs (masks, complete, train) from Redis: needs REDIS_URL and the 'redis' extra")
    wk.add_argument("--queues", default="", help="job kinds to take, comma-separated, e.g. masks,complete or train (default: all)")
    wk.add_argument("--burst", action="store_true", help="exit once no job of these kinds is pending or running")
    from .training.options import add_train_arguments  # no torch import

    add_train_arguments(sub.add_parser("train", help="train the learned mask networks, one stage per run (needs torch)"))
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
        if args.command == "import-video":
            from .importer import import_video_command

            return import_video_command(args)
        if args.command == "cvat":
            from .backend.cvat.sdk_commands import cvat_command

            return cvat_command(settings, args)
        if args.command == "train":
            try:
                from .training.train import train_command
            except ImportError as err:
                raise RuntimeError(f"scribblebox train needs torch: pip install -e '.[learned]' torch==2.13.0 ({err})") from None
            return train_command(settings, args)
        if args.command == "worker":
            try:
                from .backend.rq_jobs import run_worker
            except ImportError as err:
                raise RuntimeError(f"scribblebox worker needs redis and rq: pip install -e '.[redis]' ({err})") from None
            return run_worker(settings, os.environ, [q for q in args.queues.split(",") if q] or None, burst=args.burst)
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
