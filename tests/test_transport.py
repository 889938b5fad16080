"""The results transport between inference workers and the API process, on real multiprocessing queues."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue

import pytest

from ganserve.serve.litserve_glue import BatchQueueTransport


def _worker_side(worker: BatchQueueTransport) -> None:
    for i in range(3):
        worker.send((f"uid{i}", ("pixels", i)), consumer_id=i % 2)
    worker.flush()


def test_results_are_held_until_flush_and_then_go_as_one_message_per_consumer():
    queues = [mp.get_context("spawn").Queue() for _ in range(2)]
    worker = BatchQueueTransport(None, queues)
    worker.send(("a", 1), consumer_id=0)
    worker.send(("b", 2), consumer_id=0)
    worker.send(("c", 3), consumer_id=1)
    assert queues[0].empty() and queues[1].empty()
    worker.flush()
    assert queues[0].get(timeout=5) == [("a", 1), ("b", 2)]
    assert queues[1].get(timeout=5) == [("c", 3)]
    worker.flush()  # nothing held: nothing sent
    assert queues[0].empty()


def test_the_api_side_hands_out_each_result_in_order_across_processes():
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(2)]
    api = BatchQueueTransport(None, queues)
    worker = ctx.Process(target=_worker_side, args=(api,))  # pickled as LitServe hands it to an inference worker
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0

    async def receive(consumer: int, n: int) -> list:
        return [await api.areceive(consumer, timeout=5) for _ in range(n)]

    assert asyncio.run(receive(0, 2)) == [("uid0", ("pixels", 0)), ("uid2", ("pixels", 2))]
    assert asyncio.run(receive(1, 1)) == [("uid1", ("pixels", 1))]


def test_nothing_to_receive_the_sentinel_and_a_closed_transport():
    queues = [mp.get_context("spawn").Queue()]
    api = BatchQueueTransport(None, queues)
    with pytest.raises(queue.Empty):  # as LitServe's transport: a caller's short timeout is re-raised
        asyncio.run(api.areceive(0, timeout=0.05))
    queues[0].put(None)  # the sentinel close() sends
    assert asyncio.run(api.areceive(0, timeout=5)) is None
    api.close()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(api.areceive(0))
