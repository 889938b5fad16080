"""Image encoding for the HTTP process: PNG (default), JPEG or WebP; large images on a thread pool, so that the event
loop stays free, small ones inline, where a thread hand-off would cost more than the encoding.

Owns the encoder pool; the inference workers send raw pixels and go on to the next batch while these are encoded.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ganserve.devices import cpu_cores
from ganserve.imaging import FORMATS, encode

PNG_LEVEL = 1  # zlib level: 1 is several times faster than 6 for a few percent more bytes (see the README table)
INLINE_MAX_PIXELS = 128 * 128  # PNGs up to this size (~0.2 ms at 64x64) are encoded on the event loop itself


def media_type(fmt: str) -> str:
    return FORMATS[fmt][1]


def default_threads() -> int:
    return max(1, min(8, cpu_cores()))


class Encoder:
    """encode() on a thread pool (zlib and Pillow release the GIL while they compress, so threads encode in
    parallel), except PNGs of at most `inline_max_pixels` pixels, which are encoded at once on the calling thread."""

    def __init__(self, threads: int | None = None, inline_max_pixels: int = INLINE_MAX_PIXELS):
        self.threads = threads or default_threads()
        self.inline_max_pixels = inline_max_pixels
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # threads do not survive a fork: make the pool in the process that uses it
            self._pool, self._pid = ThreadPoolExecutor(self.threads, thread_name_prefix="encode"), os.getpid()
        return self._pool  # type: ignore[return-value]

    async def encode(self, pixels: np.ndarray, fmt: str = "png") -> tuple[bytes, float]:
        """The encoded image, and the seconds its encoding took (not counting its wait for a free thread)."""
        if fmt == "png" and pixels.shape[0] * pixels.shape[1] <= self.inline_max_pixels:
            return _timed_encode(pixels, fmt)
        return await asyncio.get_running_loop().run_in_executor(self.pool, _timed_encode, pixels, fmt)

    def shutdown(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)


def _timed_encode(pixels: np.ndarray, fmt: str) -> tuple[bytes, float]:
    started = time.perf_counter()
    data = encode(pixels, fmt, PNG_LEVEL)
    return data, time.perf_counter() - started
