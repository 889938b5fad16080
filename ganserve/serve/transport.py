"""How results travel from the inference workers to the API process: one pipe message per batch, not per image.

Owns the queues' message format. LitServe's loop hands each image's result to `send` one by one; here they are held
until the worker asks for its next batch and then go as one list, which the API process unpacks again. Per image
that saves a pickled message, a pipe write, and in the API process a thread hop and an event-loop wake-up
(benchmarks/README.md has the measurements).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from litserve.transport.process_transport import MPQueueTransport


class BatchQueueTransport(MPQueueTransport):
    """LitServe's pipe-queue transport, with `send` deferred until `flush` in the workers and lists unpacked in
    `areceive` in the API process. Each process gets its own copy (pickled), so the buffers are never shared."""

    def __init__(self, manager, queues: list):
        super().__init__(manager, queues)
        self._held: dict[int, list] = {}  # inference worker: consumer id -> results not yet sent
        self._received: deque = deque()  # API process: results of the last message not yet handed out

    def send(self, item: Any, consumer_id: int) -> None:
        self._held.setdefault(consumer_id, []).append(item)

    def flush(self) -> None:
        """Send what `send` has held, one message per API process."""
        held, self._held = self._held, {}
        for consumer_id, items in held.items():
            self._queues[consumer_id].put(items)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True):
        if not self._received:
            message = await super().areceive(consumer_id, timeout, block)
            if not isinstance(message, list):  # None (nothing within the timeout), or the close sentinel
                return message
            self._received.extend(message)
            if not self._received:
                return None
        return self._received.popleft()

    def __reduce__(self):
        return (BatchQueueTransport, (None, self._queues))
