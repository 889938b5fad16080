"""Hands validated image jobs to the inference server and awaits their pixels, one queued item per image.

Owns admission (a bounded queue: 503 + Retry-After when full), the per-image metrics and what a worker's error
becomes over HTTP; the queue itself is litserve_glue's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import HTTPException

from ganserve.serve.batching import ImageResult
from ganserve.serve.litserve_glue import InferenceServer, WorkerError
from ganserve.serve.metrics import Metrics
from ganserve.serve.params import ApiError


class GenerationError(HTTPException):
    """The server failed to make an image (never the client's fault)."""


class Dispatcher:
    """Images go to the inference server one by one, so that its dynamic batching mixes requests freely.

    `depth` counts images queued or on the device; a new request is refused (503) while depth >= max_queue.
    """

    def __init__(self, server: InferenceServer, max_queue: int, metrics: Metrics):
        self.server = server  # submit works inside its HTTP process
        self.max_queue = max_queue
        self.metrics = metrics
        self._done = deque(maxlen=512)  # completion times of recent images: the rate Retry-After is estimated from

    @property
    def depth(self) -> int:
        return self.server.in_flight

    def admit(self) -> None:
        if self.depth >= self.max_queue:
            self.metrics.rejected.inc()
            raise ApiError(
                503, f"the server is busy: {self.depth} images are queued (limit {self.max_queue}); retry shortly",
                headers={"Retry-After": str(self.retry_after())},
            )

    def retry_after(self) -> int:
        """Seconds until about half the queue has drained at the recent rate: 1 to 60."""
        span = time.monotonic() - self._done[0] if self._done else 0.0
        if span <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self.depth / 2 / (len(self._done) / span)))))

    async def generate(self, model: str, spec, *want: str) -> ImageResult:
        """One image: queue it, wait for its batch, return its pixels (with `want` WS: its ws, a LatentResult)."""
        submitted = time.monotonic()
        try:
            data = await self.server.submit((model, spec, *want))
        except WorkerError as e:
            raise _worker_error(e.error) from None
        self._done.append(time.monotonic())
        self._observe(model, data, submitted)
        return data

    def _observe(self, model: str, result: ImageResult, submitted: float) -> None:
        self.metrics.queue_time.observe(max(0.0, result.started - submitted))
        if result.first_in_batch:
            self.metrics.batch_size.labels(model).observe(result.batch_size)
            self.metrics.device_time.labels(model).observe(result.device_seconds)

    async def stream(
        self, jobs: Sequence, window: int, then: Callable[[ImageResult], Awaitable] | None = None
    ) -> AsyncIterator[tuple[int, object]]:
        """(index, result) for each (model, spec) in `jobs`, in order of completion, with at most `window` in flight.

        `then` (e.g. encoding) runs on each result as soon as it arrives; its return value is what is yielded.
        """

        async def one(i: int):
            result = await self.generate(*jobs[i])
            return await then(result) if then else result

        index: dict[asyncio.Task, int] = {}
        next_index = 0
        try:
            while next_index < len(jobs) or index:
                while next_index < len(jobs) and len(index) < window:
                    index[asyncio.ensure_future(one(next_index))] = next_index
                    next_index += 1
                done, _ = await asyncio.wait(index, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=index.__getitem__):
                    yield index.pop(task), task.result()
        finally:
            for task in index:
                task.cancel()


def _worker_error(data) -> HTTPException:
    if isinstance(data, HTTPException):
        if data.status_code == 504:
            return GenerationError(504, "the image waited too long in the queue; retry, or send fewer at once")
        return GenerationError(data.status_code, str(data.detail))
    return GenerationError(500, f"generation failed on the server: {type(data).__name__}: {data}")
