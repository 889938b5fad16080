import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ganserve.imaging import encode, encode_png


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, payload) chunks of a PNG, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind, payload = data[i + 4 : i + 8], data[i + 8 : i + 8 + length]
        (crc,) = struct.unpack(">I", data[i + 8 + length : i + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        i += 12 + length
    return out


@pytest.mark.parametrize("shape", [(64, 64, 3), (1, 1, 3), (7, 5, 3), (33, 17, 1), (256, 256, 3)])
def test_png_round_trips_through_pillow(shape):
    rng = np.random.default_rng(sum(shape))
    smooth = np.cumsum(rng.integers(-3, 4, shape), axis=0)  # row-to-row differences that wrap below 0 and above 255
    pixels = (smooth + rng.integers(0, 256, shape[1:])).astype(np.uint8)
    data = encode_png(pixels)
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.size == (shape[1], shape[0]) and im.mode == ("L" if shape[2] == 1 else "RGB")
    decoded = np.asarray(im)
    assert np.array_equal(decoded.reshape(shape), pixels)
    assert [k for k, _ in chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]


def test_png_is_not_much_larger_than_pillows():
    # Smooth images with a little noise, as generators make: the direct encoder must not bloat what it saves in time.
    rng = np.random.default_rng(0)
    for noise in (0, 3):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
        pixels = np.clip(smooth + rng.integers(-noise, noise + 1, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
        assert len(encode(pixels, "png", 1)) <= 1.2 * len(buf.getvalue())


def test_png_compress_level_changes_the_stream_not_the_pixels():
    pixels = np.random.default_rng(0).integers(0, 8, (32, 32, 3), dtype=np.uint8)
    fast, small = encode_png(pixels, 1), encode_png(pixels, 9)
    assert len(small) < len(fast)
    for data in (fast, small):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_encode_rejects_what_it_cannot_write(bad):
    with pytest.raises(ValueError, match="expected"):
        encode(bad, "png")


def _smooth_image(size: int, noise: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields with a little noise, as generators make."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR)).astype(int)
    return np.clip(smooth + rng.integers(-noise, noise + 1, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size, noise", [(64, 0), (64, 3), (256, 3)])
def test_jpeg_and_webp_are_smaller_encodings_of_the_same_pixels(size, noise):
    """What `format=jpeg|webp` promises: fewer bytes than the PNG, decoding to nearly the PNG's pixels."""
    pixels = _smooth_image(size, noise)
    other = _smooth_image(size, noise, seed=1)
    png = encode(pixels, "png")
    for fmt in ("jpeg", "webp"):
        data = encode(pixels, fmt)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == fmt.upper() and decoded.size == (size, size)
        decoded = np.asarray(decoded.convert("RGB")).astype(int)
        error = np.abs(decoded - pixels).mean()
        assert error < 6, f"{fmt} {size}x{size}: mean abs difference {error:.1f} from the PNG's pixels"
        assert error < np.abs(decoded - other).mean() / 5, f"{fmt}: not recognisably the same image"
        assert len(data) < len(png), f"{fmt} {size}x{size}: {len(data)} bytes, the PNG {len(png)}"


def test_jpeg_and_webp_still_go_through_pillow():
    pixels = np.full((16, 16, 3), 200, np.uint8)
    assert encode(pixels, "jpeg")[:2] == b"\xff\xd8"
    assert encode(pixels, "webp")[8:12] == b"WEBP"
    with pytest.raises(ValueError, match="format"):
        encode(pixels, "gif")


@pytest.mark.parametrize("inline_max_pixels", [0, 64 * 64])  # 0: every image goes through the thread pool
def test_server_encoder_gives_the_same_png_inline_and_on_its_pool(inline_max_pixels):
    import asyncio

    from ganserve.serve.encoding import PNG_LEVEL, Encoder

    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    encoder = Encoder(threads=1, inline_max_pixels=inline_max_pixels)
    try:
        data, seconds = asyncio.run(encoder.encode(pixels, "png"))
        jpeg, _ = asyncio.run(encoder.encode(pixels, "jpeg"))  # other formats always use the pool
    finally:
        encoder.shutdown()
    assert data == encode(pixels, "png", PNG_LEVEL) and seconds >= 0
    assert jpeg[:2] == b"\xff\xd8"
