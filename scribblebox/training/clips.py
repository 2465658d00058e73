"""Training clips from DAVIS-format folders (``<seq>/frames/*.jpg`` + ``<seq>/masks/*.png``), as numpy crops.

- Stage 1, `synthetic_pair`: a reference/target pair made from one annotated frame by two random affine transforms,
  the object often cut out with its mask and pasted on another sequence's frame (object composition, as RGMP), and
  sometimes partly hidden by a third sequence's object; the target's "previous mask" is its own mask, degraded.
- Stage 2, `video_clip`: 3 ordered frames of one sequence (either direction), flipped together at random, each with
  its own mild affine transform and a crop by its box with 10% noise on every edge.

Every crop is the box enlarged by a margin and resized to size x size (`models.networks.crops`), the same geometry as
inference. Generators take a numpy Generator, so a sample is a pure function of its seed (resumable, repeatable).
Frames are decoded once and kept in memory, shrunk so their long side is at most `max_side`.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scribblebox.models.networks.crops import MARGIN, crop_matrix, grid_theta, warp

log = logging.getLogger(__name__)

BOX_NOISE = 0.1  # the seed's 10% bounding-box noise, on each edge, relative to the box's side
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class VideoFrames:
    """One sequence in memory: BGR uint8 frames, uint8 0/1 masks, and the frames whose mask is not empty."""

    name: str
    frames: list[np.ndarray]
    masks: list[np.ndarray]
    present: np.ndarray


def list_folder(root: str | Path) -> list[str]:
    """Sequence names of a DAVIS-format folder (sub-folders holding frames/ and masks/), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected <seq>/frames/*.jpg and <seq>/masks/*.png)")
    return sorted(p.name for p in root.iterdir() if (p / "frames").is_dir() and (p / "masks").is_dir())


def load_sequence(folder: Path, max_side: int) -> VideoFrames:
    paths = sorted(p for p in (folder / "frames").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames, masks = [], []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(folder / "masks" / (path.stem + ".png")), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            raise ValueError(f"{path}: unreadable frame or missing masks/{path.stem}.png")
        scale = max_side / max(image.shape[:2])
        if scale < 1:
            size = (max(round(image.shape[1] * scale), 1), max(round(image.shape[0] * scale), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
        frames.append(image)
        masks.append((mask > 127).astype(np.uint8))
    present = np.array([i for i, m in enumerate(masks) if m.any()], dtype=np.int64)
    return VideoFrames(folder.name, frames, masks, present)


def load_bank(root: str | Path, names: list[str], max_side: int = 512, workers: int = 4) -> list[VideoFrames]:
    """The named sequences, decoded in parallel; sequences without any annotated frame are dropped."""
    root = Path(root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bank = list(pool.map(lambda n: load_sequence(root / n, max_side), names))
    kept = [v for v in bank if len(v.present)]
    log.info("loaded %d sequences (%d frames) from %s", len(kept), sum(len(v.frames) for v in kept), root)
    return kept


def affine(rng: np.random.Generator, centre: np.ndarray, rotate: float, scale: tuple[float, float], shift: float,
           shear: float, flip_width: int | None = None) -> np.ndarray:
    """A random 3x3 affine about `centre`: rotation (degrees, +-), isotropic scale, shear (+-), shift (pixels, +-),
    preceded by a horizontal flip of a frame `flip_width` wide when given."""
    a = np.deg2rad(rng.uniform(-rotate, rotate))
    s = rng.uniform(*scale)
    k = rng.uniform(-shear, shear)
    linear = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1, k], [0, 1]]) * s
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = centre + rng.uniform(-shift, shift, 2) - linear @ centre
    if flip_width is not None:
        out = out @ np.array([[-1, 0, flip_width - 1], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    return out


def mask_box(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray | None:
    """Tight box (x, y, w, h) of the mask after `matrix`, from its outline (no full-frame warp); None if empty."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
    moved = pts @ matrix[:2, :2].T + matrix[:2, 2]
    lo, hi = moved.min(0), moved.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0] + 1, hi[1] - lo[1] + 1])


def noisy_box(box: np.ndarray, rng: np.random.Generator, noise: float = BOX_NOISE) -> np.ndarray:
    """Each edge moved by up to `noise` of the box's side, as a tracker or a hurried user would draw it."""
    x, y, w, h = box
    x0, x1 = x + rng.uniform(-noise, noise) * w, x + w + rng.uniform(-noise, noise) * w
    y0, y1 = y + rng.uniform(-noise, noise) * h, y + h + rng.uniform(-noise, noise) * h
    return np.array([x0, y0, max(x1 - x0, 2.0), max(y1 - y0, 2.0)])


def box_centre(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre (2,), size (2,)) of the mask's tight box."""
    box = mask_box(mask, np.eye(3))
    return box[:2] + box[2:] / 2, box[2:]


def crop_object(image: np.ndarray, mask: np.ndarray, move: np.ndarray, rng: np.random.Generator, size: int,
                margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image crop, soft mask crop, frame -> crop matrix) after the augmentation `move`, cropped by the noisy box of
    the moved object (the identity is used if the move pushed the object out of the frame)."""
    box = mask_box(mask, move)
    if box is None:
        move = np.eye(3)
        box = mask_box(mask, move)
    matrix = crop_matrix(noisy_box(box, rng), size, margin) @ move
    return warp(image, matrix, size), warp(mask.astype(np.float32), matrix, size), matrix


def degrade(mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A plausible wrong version of a crop mask (as the previous frame's prediction would be): shifted, rotated,
    scaled, grown or shrunk, sometimes with a bite taken out or a blob added. float32 0/1."""
    size = mask.shape[0]
    move = affine(rng, np.array([size / 2, size / 2]), 6 * strength, (1 - 0.06 * strength, 1 + 0.06 * strength),
                  0.05 * size * strength, 0.05 * strength)
    out = (warp(mask.astype(np.float32), move, size) > 0.5).astype(np.uint8)
    r = int(rng.integers(0, max(2, int(0.04 * size * strength)) + 1))
    if r:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        out = cv2.dilate(out, kernel) if rng.random() < 0.5 else cv2.erode(out, kernel)
    if rng.random() < 0.3 * strength:
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 16 + 1, size // 5 + 2, 2))
        cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, int(rng.random() < 0.5), -1)
    return out.astype(np.float32)


def _pick(bank: list[VideoFrames], rng: np.random.Generator, other_than: int = -1) -> int:
    choices = [i for i in range(len(bank)) if i != other_than] or [other_than]
    return int(choices[rng.integers(len(choices))])


def synthetic_pair(bank: list[VideoFrames], rng: np.random.Generator, size: int, margin: float = MARGIN,
                   compose: float = 0.5, distractor: float = 0.3) -> dict[str, np.ndarray]:
    """Stage 1 sample: ref_image, ref_mask, image, previous, mask (crops; images uint8 (S, S, 3), masks float32)."""
    s = _pick(bank, rng)
    seq = bank[s]
    i = int(seq.present[rng.integers(len(seq.present))])
    image, mask = seq.frames[i], seq.masks[i]
    centre, extent = box_centre(mask)
    background = None
    if len(bank) > 1 and rng.random() < compose:
        other = bank[_pick(bank, rng, s)]
        background = other.frames[int(rng.integers(len(other.frames)))]
        fit = np.diag([image.shape[1] / background.shape[1], image.shape[0] / background.shape[0], 1.0])
    hide = None
    if len(bank) > 1 and rng.random() < distractor:
        other = bank[_pick(bank, rng, s)]
        j = int(other.present[rng.integers(len(other.present))])
        hide = (other.frames[j], other.masks[j])
    out: dict[str, np.ndarray] = {}
    for role in ("ref_", ""):
        move = affine(rng, centre, 15, (0.85, 1.15), 0.1 * float(extent.max()), 0.1)
        crop, alpha, matrix = crop_object(image, mask, move, rng, size, margin)
        if background is not None:
            jitter = affine(rng, np.array([image.shape[1] / 2, image.shape[0] / 2]), 5, (0.95, 1.1),
                            0.05 * image.shape[1], 0.03)
            back = warp(background, matrix @ jitter @ fit, size)
            crop = (back * (1 - alpha[..., None]) + crop * alpha[..., None]).astype(np.uint8)
        if hide is not None:
            crop, alpha = _occlude(crop, alpha, hide, rng, size)
        out[role + "image"], out[role + "mask"] = crop, alpha
    out["previous"] = degrade(out["mask"], rng)
    return out


def _occlude(crop: np.ndarray, alpha: np.ndarray, hide: tuple[np.ndarray, np.ndarray], rng: np.random.Generator,
             size: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste another object (its box scaled to 20-60% of the crop's side) at a random place in front of the crop's
    object, which loses the hidden pixels from its mask."""
    image, mask = hide
    side = rng.uniform(0.2, 0.6) * size
    corner = rng.uniform(-0.1 * size, size - 0.9 * side, 2)
    place = np.array([[1, 0, corner[0]], [0, 1, corner[1]], [0, 0, 1]]) @ crop_matrix(mask_box(mask, np.eye(3)), side, 0)
    cover = warp(mask.astype(np.float32), place, size)[..., None]
    crop = (crop * (1 - cover) + warp(image, place, size) * cover).astype(np.uint8)
    return crop, alpha * (1 - cover[..., 0])


def video_clip(bank: list[VideoFrames], rng: np.random.Generator, size: int, margin: float = MARGIN, length: int = 3,
               max_gap: int = 5) -> dict[str, np.ndarray]:
    """Stage 2 sample: `length` ordered annotated frames of one sequence (forward or backward, gaps 1..max_gap),
    flipped together at random, each with a mild affine transform and a crop by its noisy box.

    images (L, S, S, 3) uint8, masks (L, S, S) float32, previous: frame 0's mask in frame 1's crop (the first step's
    previous mask), theta (L-2, 2, 3): affine_grid thetas moving a prediction from crop k to crop k+1 (k >= 1)."""
    usable = [v for v in bank if len(v.present) >= length] or bank
    seq = usable[int(rng.integers(len(usable)))]
    present = seq.present
    steps = np.cumsum(np.concatenate([[0], rng.integers(1, max_gap + 1, length - 1)]))
    steps = np.minimum(steps, len(present) - 1) if steps[-1] >= len(present) else steps
    start = int(rng.integers(0, max(len(present) - int(steps[-1]), 1)))
    order = present[np.minimum(start + steps, len(present) - 1)]
    if rng.random() < 0.5:
        order = order[::-1]
    width = seq.frames[0].shape[1]
    flip = width if rng.random() < 0.5 else None
    images, masks, matrices = [], [], []
    for f in order:
        centre, extent = box_centre(seq.masks[f])
        move = affine(rng, centre, 10, (0.9, 1.1), 0.05 * float(extent.max()), 0.05, flip)
        crop, soft, matrix = crop_object(seq.frames[f], seq.masks[f], move, rng, size, margin)
        images.append(crop)
        masks.append(soft)
        matrices.append(matrix)
    previous = warp(seq.masks[order[0]].astype(np.float32), matrices[1], size)
    theta = [grid_theta(matrices[k], matrices[k + 1], size) for k in range(1, length - 1)]
    return {"images": np.stack(images), "masks": np.stack(masks), "previous": previous,
            "theta": np.stack(theta) if theta else np.zeros((0, 2, 3), np.float32)}
