"""Videos as lazily decoded frame sequences (0-based indices, BGR uint8 HxWx3).

Frames are read on demand with random access and a bounded LRU cache, so memory never grows with video length.
Returned frames are read-only (they may be shared with the cache): copy one before drawing on it.

- `VideoFile`: any file PyAV/FFmpeg can demux. Opening reads packets only (no decoding) to learn every frame's
  timestamp, so `num_frames` is exact and `frame(i)` seeks to the keyframe before frame i and decodes forward to its
  exact timestamp. The display rotation of phone videos is applied, as browsers do.
- `FrameFolder`: a folder of JPEG/PNG frames (DAVIS `frames/`), sorted by name.
- `ArrayVideo`: frames already in memory (tests, demos).

A Label Studio frame f (1-based) shows the video at time (f - 1) / fps_of_the_labeling_config: use
`index_at_time` to map it, which stays right for variable-frame-rate files.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
DEFAULT_FOLDER_FPS = 24.0
BACKWARD_BLOCK_BYTES = 96 * 2**20  # frames held at once while iterating backwards
SEEK_COST_FRAMES = 4  # a seek costs about this many decoded frames: keep decoding forward when the gap is smaller


class Video(Protocol):
    num_frames: int
    fps: float
    width: int
    height: int
    variable_frame_rate: bool
    duration: float  # seconds
    timestamps: np.ndarray  # (num_frames,) seconds from the first frame

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` (0-based), BGR uint8 (H, W, 3)."""

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Frames start, start±1, ... up to but excluding stop; backwards when stop < start."""

    def index_at_time(self, seconds: float) -> int:
        """The frame whose timestamp is nearest `seconds`."""


class FrameIndexError(IndexError, ValueError):
    """A frame index outside the video (an IndexError for sequence-like callers, a ValueError for request checks)."""


def is_variable_frame_rate(timestamps: np.ndarray, tick: float = 0.0) -> bool:
    """True when more than 1% of frame durations differ from the median by over 10% (+ one timestamp tick).

    The tick absorbs rounding in coarse time bases (WebM counts milliseconds: 30 fps is 33/34 ms)."""
    deltas = np.diff(np.asarray(timestamps, dtype=np.float64))
    if len(deltas) < 2:
        return False
    median = float(np.median(deltas))
    off = np.abs(deltas - median) > 0.1 * median + tick
    return bool(off.mean() > 0.01)


class _LRU:
    """Bounded map index -> frame, least recently used evicted first. Each item has a cost (1 unless told) and the
    costs held never exceed `size`."""

    def __init__(self, size: int) -> None:
        self.size = max(int(size), 0)
        self._items: OrderedDict[int, tuple[object, int]] = OrderedDict()
        self._held = 0

    def get(self, key: int) -> object | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: int, value: object, cost: int = 1) -> None:
        if cost > self.size:
            return
        old = self._items.pop(key, None)
        self._held += cost - (old[1] if old else 0)
        self._items[key] = (value, cost)
        while self._held > self.size:
            self._held -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items


def _readonly(frame: np.ndarray) -> np.ndarray:
    frame.flags.writeable = False
    return frame


class _VideoBase:
    """What every video shares: index checks, time lookup, iteration order, context manager."""

    num_frames: int
    fps: float
    width: int
    height: int
    variable_frame_rate: bool = False
    timestamps: np.ndarray

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        if self.num_frames > 1:
            return float(self.timestamps[-1] + np.median(np.diff(self.timestamps)))
        return 1.0 / self.fps

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release file handles (nothing to do for in-memory and folder videos)."""

    def frame(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def index_at_time(self, seconds: float) -> int:
        """The frame whose timestamp is nearest `seconds` (the earlier one on a tie), clamped to the video."""
        t = float(seconds)
        if not np.isfinite(t):
            raise ValueError(f"time must be a finite number of seconds, got {seconds!r}")
        ts = self.timestamps
        i = int(np.searchsorted(ts, t, side="left"))
        if i >= len(ts) or (i > 0 and t - ts[i - 1] <= ts[i] - t):
            i -= 1
        return max(i, 0)

    def _check_index(self, index: int) -> int:
        i = int(index)
        if not 0 <= i < self.num_frames:
            raise FrameIndexError(f"frame {index} is outside the video's frames 0..{self.num_frames - 1}")
        return i

    def _check_range(self, start: int, stop: int) -> range:
        """Indices of frames(start, stop), validated: stop may be num_frames (forward) or -1 (backward)."""
        start, stop = int(start), int(stop)
        if start == stop:
            return range(0)
        self._check_index(start)
        if not -1 <= stop <= self.num_frames:
            raise FrameIndexError(f"stop {stop} must be in -1..{self.num_frames} "
                                  "(exclusive end, -1 to include frame 0)")
        return range(start, stop, 1 if stop > start else -1)

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Frames start, start±1, ... up to but excluding stop; backwards when stop < start."""
        for i in self._check_range(start, stop):
            yield i, self.frame(i)


class ArrayVideo(_VideoBase):
    """Frames already in memory: (N, H, W, 3) uint8 BGR, for tests and demos."""

    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray, fps: float = DEFAULT_FOLDER_FPS) -> None:
        array = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or len(array) == 0:
            raise ValueError(f"ArrayVideo needs a non-empty (N, H, W, 3) uint8 BGR array, "
                             f"got {array.dtype} {array.shape}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self._frames = array
        self.num_frames, self.height, self.width = array.shape[:3]
        self.fps = float(fps)
        self.timestamps = np.arange(self.num_frames) / self.fps

    def frame(self, index: int) -> np.ndarray:
        return _readonly(self._frames[self._check_index(index)][...])


def _natural_key(path: Path) -> list:
    """'frame2' before 'frame10'; zero-padded names (DAVIS) sort the same either way."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FrameFolder(_VideoBase):
    """A folder of *.jpg / *.jpeg / *.png frames sorted by name, read lazily with a small cache."""

    def __init__(self, path: str | Path, fps: float = DEFAULT_FOLDER_FPS, cache_size: int = 16) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"frame folder not found: {folder}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not self.paths:
            raise ValueError(f"{folder} holds no {sorted(IMAGE_SUFFIXES)} frames")
        self.num_frames = len(self.paths)
        self.fps = float(fps)
        self.timestamps = np.arange(self.num_frames) / self.fps
        self._cache = _LRU(cache_size)
        first = self._read(0)
        self.height, self.width = first.shape[:2]

    def _read(self, index: int) -> np.ndarray:
        path = self.paths[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read frame {index} ({path}): not a readable JPEG/PNG image")
        if index and image.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame {index} ({path}) is {image.shape[1]}x{image.shape[0]}, the first frame is "
                             f"{self.width}x{self.height}: every frame of a folder must have the same size")
        self._cache.put(index, _readonly(image))
        return image

    def frame(self, index: int) -> np.ndarray:
        i = self._check_index(index)
        cached = self._cache.get(i)
        return cached if cached is not None else self._read(i)


def _open_container(path: Path) -> av.container.InputContainer:
    if path.is_dir():
        raise ValueError(f"{path} is a folder: open it with FrameFolder (or open_video) instead")
    if not path.is_file():
        raise ValueError(f"video file not found: {path}")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot open {path} as a video ({err}); check that it is a complete video file "
                         "(e.g. re-encode it with: ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4)") from err


class VideoFile(_VideoBase):
    """A video file decoded lazily with PyAV: exact frame count, exact seeking, bounded cache.

    The cache holds at most the bytes of `cache_size` BGR frames. Frames the decoder passes over on its way to a
    requested one (decoding forward from the keyframe it seeked to) are kept too, as decoded YUV (half the bytes):
    asking for them next costs a colour conversion instead of another seek and decode from the keyframe, which is
    what the mask engine's two sweeps, reading one decoder from two threads, would otherwise pay again and again.
    """

    def __init__(self, path: str | Path, cache_size: int = 32) -> None:
        self.path = Path(path)
        self._container = _open_container(self.path)
        try:
            self._index()
            self._cache = _LRU(0)  # sized in bytes once the first frame gives the frame size
            self._reader: Iterator[tuple[int, av.VideoFrame]] | None = None
            self._reader_next = 0
            self._rotation = 0
            self.decode_errors = 0  # damaged packets skipped so far
            self.frames_decoded = 0  # by the decoder so far (seeks decode again from the keyframe): a cost to watch
            self._gap_warned = False
            first = self._decoded(0)  # proves the stream decodes, and gives the display size
            self._rotation = (round(first.rotation / 90) % 4) if first.rotation else 0
            if first.rotation % 90:
                log.warning("%s: rotation %d° is not a multiple of 90°, ignored", self.path, first.rotation)
            image = self._to_bgr(first)
            self.height, self.width = image.shape[:2]
            self._cache = _LRU(cache_size * image.nbytes)
            self._cache.put(0, image, image.nbytes)
        except BaseException:
            self._container.close()
            raise
        yuv_bytes_per_frame = self.width * self.height * 3 // 2
        self.backward_block = int(np.clip(BACKWARD_BLOCK_BYTES // yuv_bytes_per_frame, 8, 128))

    def _index(self) -> None:
        """Demux every packet (no decoding) to learn each frame's timestamp and the keyframes."""
        if not self._container.streams.video:
            raise ValueError(f"{self.path} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        pts, keys, packets = [], [], 0
        try:
            for packet in self._container.demux(stream):
                packets += packet.size > 0
                if packet.size == 0 or packet.is_discard:  # the end-of-stream marker; frames an edit list hides
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    raise ValueError(f"{self.path} has no frame timestamps (a raw stream?): remux it into MP4, "
                                     "e.g. ffmpeg -i in -c copy out.mp4")
                pts.append(ts)
                if packet.is_keyframe:
                    keys.append(ts)
        except av.error.FFmpegError as err:
            raise ValueError(f"{self.path} is corrupt ({err}): re-encode or re-upload it") from err
        if not pts:
            raise ValueError(f"{self.path} has a video stream but no frames")
        declared = stream.frames
        if declared and packets < declared:
            raise ValueError(f"{self.path} is truncated: its header declares {declared} frames but only {packets} "
                             "are present; re-upload the complete file")
        self._stream = stream
        self._pts = np.unique(np.asarray(pts, dtype=np.int64))  # display order (B-frames arrive out of order)
        if len(self._pts) < len(pts):
            log.warning("%s: %d frames share a timestamp with another and are ignored",
                        self.path, len(pts) - len(self._pts))
        self._index_of = {int(p): i for i, p in enumerate(self._pts)}
        key_index = np.searchsorted(self._pts, np.asarray(keys, dtype=np.int64), side="left")
        self._keyframes = np.unique(np.concatenate([[0], key_index[key_index < len(self._pts)]]))
        self.num_frames = len(self._pts)
        tick = float(stream.time_base)
        self.timestamps = (self._pts - self._pts[0]) * tick
        rate = stream.average_rate
        if rate and rate > 0:
            self.fps = float(rate)
        elif self.num_frames > 1:
            self.fps = 1.0 / float(np.median(np.diff(self.timestamps)))
        else:
            self.fps = DEFAULT_FOLDER_FPS
        self.variable_frame_rate = is_variable_frame_rate(self.timestamps, tick)

    # ---- decoding ---------------------------------------------------------------------------------------------
    def _keyframe_before(self, index: int) -> int:
        return int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])

    def _known(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decoded frames from the current position whose timestamp is one of the indexed frames. A damaged packet
        is skipped, as players do (its frames are then repeated neighbours); `decode_errors` counts them."""
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as err:
                    if not self.decode_errors:
                        log.warning("%s: damaged data skipped (%s)", self.path, err)
                    self.decode_errors += 1
                    continue
                for frame in frames:
                    self.frames_decoded += 1
                    index = self._index_of.get(frame.pts) if frame.pts is not None else None
                    if index is not None:
                        yield index, frame
        except av.error.FFmpegError as err:
            raise ValueError(f"{self.path}: reading failed ({err}); the file is corrupt, "
                             "re-encode or re-upload it") from err

    def _seek_to(self, index: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decoder positioned at or before `index`: seek to its keyframe, to earlier ones if the demuxer overshoots."""
        if self._container is None:
            raise ValueError(f"{self.path} is closed")
        key = self._keyframe_before(index)
        tries = [key, self._keyframe_before(max(key - 1, 0)), 0]
        for attempt, start in enumerate(tries):
            self._container.seek(int(self._pts[start]), stream=self._stream, backward=True, any_frame=False)
            frames = self._known()
            first = next(frames, None)
            if first is None:
                continue
            if first[0] <= index or attempt == len(tries) - 1:
                return _chain(first, frames)
            log.debug("%s: seek for frame %d landed on frame %d, retrying earlier", self.path, index, first[0])
        raise ValueError(f"{self.path}: no frame could be decoded near frame {index}; "
                         "the file is corrupt, re-encode it")

    def _decode_from(self, index: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Every frame from `index` to the end in order, after one seek; before them, the frames the decoder passes on
        its way from the keyframe (the caller may keep them). A frame the decoder never outputs (damaged file) is
        replaced by the previous one, as a player would show it."""
        expected, last = index, None
        for j, frame in self._seek_to(index):
            if j < expected:
                last = frame
                if j < index:
                    yield j, frame
                continue
            if j > expected:
                log.log(logging.DEBUG if self._gap_warned else logging.WARNING,
                        "%s: frames %d..%d could not be decoded, repeating a neighbour", self.path, expected, j - 1)
                self._gap_warned = True
                for k in range(expected, j):
                    yield k, last if last is not None else frame
            yield j, frame
            last, expected = frame, j + 1
            if expected >= self.num_frames:
                return
        if last is None:
            raise ValueError(f"{self.path}: frame {index} could not be decoded; the file is corrupt, re-encode it")
        log.warning("%s: the stream ends after frame %d of %d, repeating it", self.path, expected - 1, self.num_frames)
        for k in range(expected, self.num_frames):
            yield k, last

    def _decoded(self, index: int) -> av.VideoFrame:
        """Decoded frame `index`: keep decoding forward when that is cheaper than seeking to its keyframe."""
        ahead = index - self._reader_next
        if self._reader is None or ahead < 0 or ahead > index - self._keyframe_before(index) + SEEK_COST_FRAMES:
            self._reader, self._reader_next = self._decode_from(index), index
        try:
            for j, frame in self._reader:
                self._reader_next = j + 1
                if j == index:
                    return frame
                if j not in self._cache:  # passed over on the way: keep it, decoded (see the class docstring)
                    self._cache.put(j, frame, sum(plane.buffer_size for plane in frame.planes))
        except BaseException:
            self._reader = None  # a failed generator cannot be resumed: seek again next time
            raise
        self._reader = None
        raise RuntimeError(f"{self.path}: the decoder never produced frame {index}")

    def _to_bgr(self, frame: av.VideoFrame) -> np.ndarray:
        image = frame.to_ndarray(format="bgr24")
        if self._rotation:
            image = np.ascontiguousarray(np.rot90(image, self._rotation))  # counter-clockwise, as FFmpeg displays it
        return _readonly(image)

    # ---- public -----------------------------------------------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        i = self._check_index(index)
        if self._container is None:
            raise ValueError(f"{self.path} is closed")
        cached = self._cache.get(i)
        if isinstance(cached, np.ndarray):
            return cached
        image = self._to_bgr(cached if cached is not None else self._decoded(i))
        self._cache.put(i, image, image.nbytes)
        return image

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Forward: one seek, then sequential decoding. Backward: blocks of `backward_block` frames (about 96 MiB),
        each decoded forward from a seek and yielded in reverse, so memory stays bounded."""
        order = self._check_range(start, stop)
        if order.step > 0:
            yield from super().frames(start, stop)
            return
        hi, end = order.start, order.stop + 1  # frames hi, hi-1, ..., end
        while hi >= end:
            lo = max(end, hi - self.backward_block + 1)
            lo = max(lo, self._keyframe_before(hi))  # never straddle a keyframe: the block decodes from it anyway
            block: list[np.ndarray | av.VideoFrame | None] = []
            for i in range(lo, hi + 1):  # held as decoded YUV (half the bytes of BGR) until yielded
                cached = self._cache.get(i)
                block.append(cached if cached is not None else self._decoded(i))
            for offset in range(len(block) - 1, -1, -1):
                item, block[offset] = block[offset], None
                if not isinstance(item, np.ndarray):
                    item = self._to_bgr(item)
                    self._cache.put(lo + offset, item, item.nbytes)
                yield lo + offset, item
            hi = lo - 1

    def close(self) -> None:
        if self._container is not None:
            self._reader = None
            self._container.close()
            self._container = None


def _chain(first: tuple[int, av.VideoFrame],
           rest: Iterator[tuple[int, av.VideoFrame]]) -> Iterator[tuple[int, av.VideoFrame]]:
    yield first
    yield from rest


def open_video(path: str | Path, fps: float | None = None) -> VideoFile | FrameFolder:
    """A folder of frames (played at `fps`, default 24) or a video file (its own timestamps; `fps` is ignored)."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path, fps=fps or DEFAULT_FOLDER_FPS)
    return VideoFile(path)
