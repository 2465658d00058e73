"""Synthetic videos with KNOWN object motion, for unit tests, the Label Studio end-to-end tests and the README demo.

A colourful checker-and-noise patch (something CSRT locks onto) moves over a static, smooth random background, and
the ground-truth box of every frame is returned. Rendering is sub-pixel exact: the patch covers [x, x + w) x [y, y + h)
in pixel-edge coordinates (pixel j spans [j, j + 1), the convention of `geometry.mask_to_box`), blended at the edges.
Everything is deterministic for a given seed. Files are browser-playable: H.264 (libx264, yuv420p) in MP4, or VP9
in WebM.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

X264_OPTIONS = {"crf": "18", "preset": "veryfast"}
VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0", "row-mt": "1"}


def moving_box_track(times: np.ndarray, start: Sequence[float], velocity: Sequence[float],
                     scale_rate: float) -> np.ndarray:
    """Boxes (N, 4) at `times` (in frames, may be fractional): the centre moves by `velocity` px per frame, the size
    grows by a factor (1 + scale_rate) per frame around the centre."""
    t = np.asarray(times, dtype=np.float64)
    x, y, w, h = (float(v) for v in start)
    scale = (1.0 + scale_rate) ** t
    cx = x + w / 2 + velocity[0] * t
    cy = y + h / 2 + velocity[1] * t
    ws, hs = w * scale, h * scale
    return np.stack([cx - ws / 2, cy - hs / 2, ws, hs], axis=1)


def smooth_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Static colourful blobs plus finer texture: not flat, so trackers and codecs behave as on real footage."""
    coarse = rng.uniform(0, 1, (max(height // 40, 2), max(width // 40, 2), 3)).astype(np.float32)
    fine = rng.uniform(0, 1, (max(height // 8, 2), max(width // 8, 2), 3)).astype(np.float32)
    image = 0.75 * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += 0.25 * cv2.resize(fine, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(50 + 150 * image, 0, 255).astype(np.uint8)


def object_texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A checker of random saturated colours with pixel noise: a distinctive, trackable appearance."""
    cell = max(min(width, height) // 6, 3)
    cells = rng.integers(0, 2, (-(-height // cell), -(-width // cell), 3)) * 215 + rng.integers(0, 40, (1, 1, 3))
    patch = np.kron(cells, np.ones((cell, cell, 1)))[:height, :width]
    patch = patch + rng.normal(0, 12, patch.shape)
    return np.clip(patch, 0, 255).astype(np.uint8)


@dataclass
class MovingBoxScene:
    """A textured object at `boxes[i]` on frame i over a static background."""

    background: np.ndarray  # (H, W, 3) uint8 BGR
    texture: np.ndarray  # (h0, w0, 3) uint8 BGR: the object at its first-frame size
    boxes: np.ndarray  # (N, 4) float x, y, w, h in pixels; may reach outside the frame (clip with geometry.clip_box)

    def render(self, index: int) -> np.ndarray:
        x, y, w, h = self.boxes[index]
        th, tw = self.texture.shape[:2]
        sx, sy = w / tw, h / th
        # texture pixel u (edge coords u .. u+1) lands on frame edge coords x + u*sx: pixel centres are at +0.5
        warp = np.array([[sx, 0, x - 0.5 + 0.5 * sx], [0, sy, y - 0.5 + 0.5 * sy]], dtype=np.float64)
        size = (self.background.shape[1], self.background.shape[0])
        patch = cv2.warpAffine(self.texture.astype(np.float32), warp, size, flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(np.ones((th, tw), np.float32), warp, size, flags=cv2.INTER_LINEAR)
        out = patch + (1.0 - alpha[..., None]) * self.background  # the black border makes `patch` premultiplied
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(len(self.boxes)):
            yield self.render(i)


def moving_box_scene(num_frames: int = 60, size: tuple[int, int] = (640, 360),
                     start: Sequence[float] = (60, 80, 120, 90), velocity: Sequence[float] = (4, 1.5),
                     scale_rate: float = 0.0, seed: int = 0, times: np.ndarray | None = None) -> MovingBoxScene:
    """The scene of `make_moving_box_video`, in memory (wrap `np.stack(list(scene.frames()))` in an ArrayVideo).
    `times`: frame times in (fractional) frames, default 0..num_frames-1."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if start[2] < 1 or start[3] < 1:
        raise ValueError(f"the start box {tuple(start)} must be at least 1x1 pixels")
    rng = np.random.default_rng(seed)
    width, height = size
    background = smooth_background(width, height, rng)
    texture = object_texture(max(round(start[2]), 1), max(round(start[3]), 1), rng)
    t = np.arange(num_frames, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    return MovingBoxScene(background, texture, moving_box_track(t, start, velocity, scale_rate))


def _check_codec(codec: str, suffix: str) -> str:
    if suffix == ".webm" and codec == "libx264":
        codec = "libvpx-vp9"  # WebM cannot hold H.264
    try:
        av.codec.Codec(codec, "w")
    except (av.error.FFmpegError, ValueError) as err:  # UnknownCodecError is a ValueError in some PyAV versions
        raise ValueError(f"this PyAV build cannot encode {codec!r}; use libx264 (.mp4)") from err
    return codec


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25, codec: str = "libx264",
                times_ms: Sequence[int] | None = None, gop: int = 25, rotation: int = 0) -> Path:
    """Encode BGR frames: constant `fps`, or explicit presentation times in milliseconds (variable frame rate).

    rotation: display rotation in degrees counter-clockwise (multiple of 90), stored as metadata as phones do;
    the frames given are what is displayed, so they are stored rotated back."""
    path = Path(path)
    codec = _check_codec(codec, path.suffix.lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    turns = (rotation // 90) % 4
    options = {"movflags": "+faststart"} if path.suffix.lower() in {".mp4", ".mov", ".m4v"} else {}
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        codec_options = X264_OPTIONS if codec == "libx264" else VP9_OPTIONS if "vp9" in codec else {}
        stream.codec_context.options = dict(codec_options)
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if turns:
            stream.set_display_rotation(90 * turns)
        frames_written = 0
        for i, image in enumerate(frames):
            stored = np.ascontiguousarray(np.rot90(image, -turns)) if turns else image
            if i == 0:
                height, width = stored.shape[:2]
                if width % 2 or height % 2:
                    raise ValueError(f"frame size {width}x{height} must be even for yuv420p: crop or pad one pixel")
                stream.width, stream.height = width, height
            frame = av.VideoFrame.from_ndarray(stored, format="bgr24")
            if times_ms is None:
                frame.pts = i
            else:
                frame.pts, frame.time_base = int(times_ms[i]), Fraction(1, 1000)
            container.mux(stream.encode(frame))
            frames_written += 1
        if not frames_written:
            raise ValueError("no frames to write")
        container.mux(stream.encode(None))
    return path


def make_moving_box_video(path: str | Path, num_frames: int = 60, size: tuple[int, int] = (640, 360), fps: float = 25,
                          start: Sequence[float] = (60, 80, 120, 90), velocity: Sequence[float] = (4, 1.5),
                          scale_rate: float = 0.0, codec: str = "libx264", seed: int = 0, gop: int = 25,
                          rotation: int = 0) -> np.ndarray:
    """Write a constant-frame-rate video of a moving (and optionally growing) textured box; returns its
    ground-truth boxes (N, 4) x, y, w, h in pixels of the displayed frame. A `.webm` path is encoded with VP9."""
    scene = moving_box_scene(num_frames, size, start, velocity, scale_rate, seed)
    write_video(path, scene.frames(), fps=fps, codec=codec, gop=gop, rotation=rotation)
    return scene.boxes


def make_vfr_video(path: str | Path, num_frames: int = 40, size: tuple[int, int] = (320, 240), fps: float = 25,
                   velocity: Sequence[float] = (3, 1), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a variable-frame-rate MP4: frame durations of 0.5, 1 or 2 nominal frames, in random order.

    Returns (timestamps in seconds (N,), ground-truth boxes (N, 4)); the box moves `velocity` px per 1/fps s."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([0.5, 1.0, 1.0, 2.0], size=num_frames - 1)
    steps[:2] = (0.5, 2.0)  # irregular whatever the seed
    times_ms = np.rint(np.concatenate([[0.0], np.cumsum(steps)]) * 1000.0 / fps).astype(np.int64)
    w, h = size
    start = (w / 8, h / 4, w / 4, h / 4)
    scene = moving_box_scene(num_frames, size, start, velocity, 0.0, seed, times=times_ms * fps / 1000.0)
    write_video(path, scene.frames(), fps=fps, times_ms=times_ms)
    return times_ms / 1000.0, scene.boxes
