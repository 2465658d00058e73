"""Label Studio brush masks <-> bool arrays: the thi.ng ``rle-pack`` bit format LS stores in ``value.rle``.

The RLE packs a flat RGBA image (H * W * 4 bytes); a mask is its alpha channel. Bit layout (MSB first):
32 bits value count, 5 bits word size - 1, 4 x 4 bits run-length field sizes - 1 (LS: 8 and 3, 4, 8, 16), then
tokens ``flag(1) size_index(2) count-1(size bits)`` followed by one word (flag 1: a run of that word) or
`count` words (flag 0: literals). Our encoder writes exactly what ``label_studio_sdk.converter.brush.mask2rle``
writes (one byte-for-byte equal list), vectorised; the decoder reads any valid stream, including the literal
runs the LS editor writes for its own strokes.
"""
from __future__ import annotations

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
MAX_CHUNK = 1 << 16  # longest run one 16-bit count holds
ALPHA_THRESHOLD = 128  # an edited pixel counts as "mask" from half coverage up (the LS editor may antialias)


def _header(num: int) -> tuple[int, int]:
    bits = num
    bits = (bits << 5) | (WORD_SIZE - 1)
    for size in RLE_SIZES:
        bits = (bits << 4) | (size - 1)
    return bits, 32 + 5 + 4 * len(RLE_SIZES)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(run values, run lengths) of a 1-D array."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(values)]]))
    return values[starts], lengths


def _pack(num: int, run_values: np.ndarray, lengths: np.ndarray) -> list[int]:
    """The bit stream for `num` values made of these runs (in order), packed into bytes as the SDK pads them."""
    if num >= 1 << 32:
        raise ValueError(f"{num} values do not fit the RLE's 32-bit count; encode a smaller image")
    head, head_bits = _header(num)
    parts = [(head >> np.arange(head_bits - 1, -1, -1, dtype=np.int64)) & 1]
    if len(lengths):
        # Runs over 256 use 16-bit counts and are cut into chunks of at most 2**16 (the SDK's rule, kept exactly).
        chunks = np.where(lengths > 256, -(-lengths // MAX_CHUNK), 1)
        token_values = np.repeat(run_values, chunks).astype(np.int64)
        token_lengths = np.full(len(token_values), MAX_CHUNK, dtype=np.int64)
        token_lengths[np.cumsum(chunks) - 1] = lengths - MAX_CHUNK * (chunks - 1)
        original = np.repeat(lengths, chunks)
        index = np.searchsorted(np.array([8, 16, 256]), original, side="left")  # <=8: 0, <=16: 1, <=256: 2, else 3
        count_bits = np.array(RLE_SIZES, dtype=np.int64)[index]
        flag = (original > 1).astype(np.int64)  # a single value is a 1-long literal, as the SDK writes it
        count = np.where(original > 1, token_lengths - 1, 0)
        nbits = 3 + count_bits + WORD_SIZE
        codes = (((flag << 2 | index) << count_bits | count) << WORD_SIZE) | token_values
        shifts = nbits[:, None] - 1 - np.arange(int(nbits.max()))[None, :]
        bits = (codes[:, None] >> np.maximum(shifts, 0)) & 1
        parts.append(bits[shifts >= 0])  # row-major: token after token, most significant bit first
    stream = np.concatenate(parts).astype(np.uint8)
    packed = np.packbits(stream)  # zero-padded to whole bytes
    if len(stream) % 8 == 0:
        packed = np.append(packed, np.uint8(0))  # the SDK always pads, a whole zero byte when already aligned
    return packed.tolist()


def encode_bytes(values: np.ndarray) -> list[int]:
    """RLE of a flat uint8 array, exactly as the SDK's ``encode_rle`` writes it."""
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype != np.uint8:
        raise ValueError(f"encode_bytes needs a flat uint8 array, got {values.dtype} with shape {values.shape}")
    if not len(values):
        return _pack(0, values, np.zeros(0, dtype=np.int64))
    return _pack(len(values), *_runs(values))


def encode_mask(mask: np.ndarray) -> list[int]:
    """Bool (H, W) mask -> LS brush ``rle`` (every RGBA channel 255 inside the mask, 0 outside).

    Runs are found on pixels and scaled by the 4 channels: the same stream as encoding the RGBA bytes, 4x less work."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a brush mask must be a non-empty 2-D (height, width) array, got shape {mask.shape}")
    pixels = np.where(mask.astype(bool).ravel(), np.uint8(255), np.uint8(0))
    run_values, lengths = _runs(pixels)
    return _pack(4 * pixels.size, run_values, 4 * lengths)


class _Bits:
    """Reads big-endian bit fields from a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.total = 8 * len(data)

    def read(self, k: int) -> int:
        end = self.pos + k
        if end > self.total:
            raise ValueError(f"brush RLE ends early: needs bit {end}, has {self.total}; the rle list is truncated")
        first, last = self.pos >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        self.pos = end
        return (chunk >> (8 * (last - first) - (end - 8 * first))) & ((1 << k) - 1)


def decode_bytes(rle: list[int] | np.ndarray) -> np.ndarray:
    """LS brush ``rle`` -> the flat uint8 array it packs (any word size up to 8, any run-length field sizes)."""
    raw = np.asarray(rle)
    if raw.ndim != 1 or raw.dtype.kind not in "iu" or (raw.size and (raw.min() < 0 or raw.max() > 255)):
        raise ValueError("brush 'rle' must be a flat list of byte values 0..255")
    data = raw.astype(np.uint8).tobytes()
    bits = _Bits(data)
    num = bits.read(32)
    word = bits.read(5) + 1
    if word > 8:
        raise ValueError(f"brush RLE uses {word}-bit words; Label Studio masks use 8")
    sizes = [bits.read(4) + 1 for _ in range(4)]
    unpacked: np.ndarray | None = None  # the stream as single bits, for literal runs (rare in our own masks)
    weights = 1 << np.arange(word - 1, -1, -1)
    values: list[int] = []
    lengths: list[int] = []
    done = 0
    while done < num:
        head = bits.read(3)
        count = min(bits.read(sizes[head & 3]) + 1, num - done)
        if head >> 2:
            values.append(bits.read(word))
            lengths.append(count)
        else:
            stop = bits.pos + count * word
            if stop > bits.total:
                raise ValueError("brush RLE ends inside a literal run; the rle list is truncated")
            if unpacked is None:
                unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
            values.extend((unpacked[bits.pos:stop].reshape(count, word) @ weights).tolist())
            lengths.extend([1] * count)
            bits.pos = stop
        done += count
    return np.repeat(np.array(values, dtype=np.uint8), np.array(lengths, dtype=np.int64))


def decode_mask(rle: list[int] | np.ndarray, width: int, height: int) -> np.ndarray:
    """LS brush ``rle`` of a width x height image -> bool (H, W) mask (alpha >= ALPHA_THRESHOLD)."""
    flat = decode_bytes(rle)
    if flat.size != width * height * 4:
        raise ValueError(f"brush RLE holds {flat.size} values, but a {width}x{height} RGBA image needs "
                         f"{width * height * 4}: original_width/original_height do not match the mask")
    return flat.reshape(height, width, 4)[:, :, 3] >= ALPHA_THRESHOLD


def brush_result(mask: np.ndarray, item_index: int, label: str, from_name: str, to_name: str,
                 region_id: str | None = None) -> dict:
    """One ``brushlabels`` result on page `item_index` of an image list, sized like the mask."""
    height, width = np.asarray(mask).shape
    out = {"from_name": from_name, "to_name": to_name, "type": "brushlabels", "original_width": int(width),
           "original_height": int(height), "image_rotation": 0, "item_index": int(item_index),
           "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]}}
    if region_id:
        out["id"] = region_id
    return out
