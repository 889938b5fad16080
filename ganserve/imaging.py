"""Image conversions used everywhere: generator output -> uint8, uint8 -> PIL / encoded bytes, and sample grids.

Owns the one float->uint8 rule (x * 127.5 + 128, clamped, truncated) and the image file formats we write.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ganserve.errors import UsageError

if TYPE_CHECKING:
    import torch

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


def to_uint8(img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """[N, C, H, W] float in about [-1, 1] -> [N, H, W, C] uint8 on the same device (a numpy array for a numpy
    array, with the same bits)."""
    if isinstance(img, np.ndarray):
        scaled = np.clip(img.astype(np.float32) * np.float32(127.5) + np.float32(128), 0, 255)
        return np.ascontiguousarray(scaled.astype(np.uint8).transpose(0, 2, 3, 1))
    import torch

    return (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or 0 in pixels.shape:
        raise ValueError(f"expected [H, W, 1|3] uint8 pixels, got {pixels.dtype} {pixels.shape}")


def to_pil(pixels: np.ndarray) -> Image.Image:
    """[H, W, C] uint8 with C = 1 or 3 -> PIL image (mode L or RGB)."""
    check_pixels(pixels)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def encode(pixels: np.ndarray, fmt: str = "png", compress_level: int = 1, quality: int = 90) -> bytes:
    """Encode one [H, W, C] uint8 image as png (lossless; fast level by default), jpeg or webp."""
    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "png":
        return encode_png(pixels, compress_level)
    buf = io.BytesIO()
    to_pil(pixels).save(buf, format=FORMATS[fmt][0], quality=quality)
    return buf.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (greyscale, truecolour)


ANIMATIONS = {"gif": ("GIF", "image/gif"), "webp": ("WEBP", "image/webp")}


def encode_animation(frames: Sequence[np.ndarray] | np.ndarray, fmt: str = "gif", fps: float = 24.0,
                     quality: int = 90) -> bytes:
    """Encode [H, W, C] uint8 frames as one animated GIF (a palette of its own per frame) or WebP (lossy at
    `quality`), playing at `fps` and looping forever."""
    if fmt not in ANIMATIONS:
        raise UsageError(f"animation format must be one of {', '.join(ANIMATIONS)}, got {fmt!r}")
    images = [to_pil(np.asarray(f)) for f in frames]
    if not images:
        raise UsageError("an animation needs at least one frame")
    buf = io.BytesIO()
    options = {"quality": quality, "method": 4} if fmt == "webp" else {"optimize": False, "disposal": 1}
    images[0].save(buf, ANIMATIONS[fmt][0], save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, **options)
    return buf.getvalue()


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """[H, W, 1|3] uint8 -> PNG bytes, written directly: every row uses the 'Up' filter (the difference from the row
    above, which uint8 arithmetic wraps modulo 256 as the format wants) and one zlib stream, with less work per row
    than Pillow's encoder, which tries its filters."""
    check_pixels(pixels)
    h, w, c = pixels.shape
    flat = np.ascontiguousarray(pixels).reshape(h, w * c)
    rows = np.empty((h, 1 + w * c), np.uint8)
    rows[:, 0] = 2  # filter type Up; on the first row the row above counts as zeros
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, PNG_COLOR_TYPES[c], 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_grid(images: Sequence[np.ndarray] | np.ndarray, cols: int | None = None, pad: int = 0) -> np.ndarray:
    """Tile [N, H, W, C] uint8 images row by row into one [rows*H, cols*W, C] image (white padding)."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = im
    return grid
