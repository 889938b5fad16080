"""Image encoding for the HTTP process: PNG (default), JPEG or WebP, in a thread pool so the event loop stays free.

Owns the encoder pool; the inference workers send raw pixels and go on to the next batch while these are encoded.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ganserve.imaging import FORMATS, encode

PNG_LEVEL = 1  # zlib level: 1 is several times faster than 6 for a few percent more bytes (see the README table)


def media_type(fmt: str) -> str:
    return FORMATS[fmt][1]


def default_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


class Encoder:
    """encode() on a thread pool. Pillow releases the GIL while it compresses, so threads encode in parallel."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # threads do not survive a fork: make the pool in the process that uses it
            self._pool, self._pid = ThreadPoolExecutor(self.threads, thread_name_prefix="encode"), os.getpid()
        return self._pool  # type: ignore[return-value]

    async def encode(self, pixels: np.ndarray, fmt: str = "png") -> tuple[bytes, float]:
        """The encoded image, and the seconds its encoding took (not counting its wait for a free thread)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, _timed_encode, pixels, fmt)

    def shutdown(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)


def _timed_encode(pixels: np.ndarray, fmt: str) -> tuple[bytes, float]:
    started = time.perf_counter()
    data = encode(pixels, fmt, PNG_LEVEL)
    return data, time.perf_counter() - started
