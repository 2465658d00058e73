"""DAVIS-format folders (``<seq>/frames/*.jpg`` + ``<seq>/masks/*.png``) as lazy videos with per-frame GT boxes.

Boxes come from the masks (tight box of the pixels > 127) so any video-object-segmentation set doubles as a
box-tracking benchmark; frames stay on disk and are decoded only when a method asks for them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scribblebox.models.geometry import mask_to_box
from scribblebox.models.video import FrameFolder, FrameIndexError, Video

MASK_THRESHOLD = 127


@dataclass
class Sequence:
    """One annotated video: frames read lazily, GT boxes (N, 4) in pixels with NaN rows where the mask is empty."""

    name: str
    video: Video
    gt: np.ndarray


class Clip:
    """The first `num_frames` frames of a video, so quick runs see a shorter video everywhere (engines included)."""

    def __init__(self, video: Video, num_frames: int) -> None:
        if not 0 < num_frames <= video.num_frames:
            raise ValueError(f"clip length {num_frames} must be in 1..{video.num_frames}")
        self._video = video
        self.num_frames = num_frames
        self.fps = video.fps
        self.width = video.width
        self.height = video.height
        self.variable_frame_rate = video.variable_frame_rate
        self.timestamps = video.timestamps[:num_frames]
        self.duration = float(video.timestamps[num_frames]) if num_frames < video.num_frames else video.duration

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_frames:
            raise FrameIndexError(f"frame {index} is outside the clip's frames 0..{self.num_frames - 1}")
        return self._video.frame(index)

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        if start != stop and not (0 <= start < self.num_frames and -1 <= stop <= self.num_frames):
            raise FrameIndexError(f"frames({start}, {stop}) is outside the clip's frames 0..{self.num_frames - 1}")
        return self._video.frames(start, stop)

    def index_at_time(self, seconds: float) -> int:
        return min(self._video.index_at_time(seconds), self.num_frames - 1)


def list_sequences(root: str | Path) -> list[str]:
    """Names of the sub-folders of `root` that hold both frames/ and masks/, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected <seq>/frames/*.jpg and <seq>/masks/*.png)")
    return sorted(p.name for p in root.iterdir() if (p / "frames").is_dir() and (p / "masks").is_dir())


def gt_boxes(mask_dir: Path, frame_names: list[str]) -> np.ndarray:
    """Tight GT box per frame from masks/<frame stem>.png; NaN where the mask is empty."""
    out = np.full((len(frame_names), 4), np.nan)
    for i, name in enumerate(frame_names):
        path = mask_dir / (Path(name).stem + ".png")
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{path}: missing or unreadable mask; every frame needs a mask of the same name (.png)")
        box = mask_to_box(mask > MASK_THRESHOLD)
        if box is not None:
            out[i] = box
    return out


def load_sequence(root: str | Path, name: str, max_frames: int = 0) -> Sequence:
    """One sequence of a DAVIS-format folder, cut to its first `max_frames` frames when that is > 0."""
    folder = Path(root) / name
    if not (folder / "frames").is_dir():
        raise FileNotFoundError(f"{folder}/frames: no such folder; known sequences: {list_sequences(root)}")
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 (0: all frames), got {max_frames}")
    folder_video = FrameFolder(folder / "frames")
    video: Video = folder_video
    if 0 < max_frames < video.num_frames:
        video = Clip(video, max_frames)
    names = [p.name for p in folder_video.paths[: video.num_frames]]  # masks follow the folder's frame order
    return Sequence(name=name, video=video, gt=gt_boxes(folder / "masks", names))
