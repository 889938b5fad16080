"""What ganserve.serve.litserve_glue assumes about LitServe, one test per assumption.

The glue drives a few of LitServe's private names (see its module docstring). An upgrade of LitServe that changes
one of them should fail the test named after it here, rather than the server at run time. None of these tests
starts a server; the few that need a process start only a Manager.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import pickle
import queue
import time

import litserve as ls
import pytest
from fastapi import HTTPException
from litserve.callbacks import CallbackRunner
from litserve.loops import BatchedLoop
from litserve.server import _LitAPIConnector, response_queue_to_buffer
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from ganserve.serve import litserve_glue as glue

SENTINEL = (None, None, None, None)  # what LitServe's loops stop on when they read it from the request queue


class Doubler:
    """A worker: each item doubled; "boom" raises."""

    def setup(self, device: str) -> None:
        pass

    def predict(self, items: list) -> list:
        if "boom" in items:
            raise ValueError("boom")
        return [2 * x for x in items]


def settings(**overrides) -> glue.ServerSettings:
    values = dict(api_path="/generate", accelerator="cpu", devices=1, workers_per_device=2, max_batch_size=4,
                  batch_timeout=0.0, timeout=30.0, drain_seconds=1.0)
    return glue.ServerSettings(**{**values, **overrides})


def params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


class Recorder:
    """A results transport that keeps what the loop sends."""

    def __init__(self):
        self.sent: list = []

    def send(self, item, consumer_id: int) -> None:
        self.sent.append((consumer_id, item))


def run_loop(api, items: list, batch: int | None = None) -> list:
    """LitServe's batched loop over `items` (queue items), then the sentinel; what it sent. The sentinel ends the
    loop at once, the batch being collected lost: `batch` (default: all items) must end exactly before it."""
    api.max_batch_size = batch or len(items)  # with batch_timeout 0 a batch closes when full or the queue is empty
    requests: queue.Queue = queue.Queue()
    for item in items:
        requests.put(item)
    requests.put(SENTINEL)
    transport = Recorder()
    BatchedLoop().run_batched_loop(api, requests, transport, CallbackRunner())
    return transport.sent


# -- version -----------------------------------------------------------------------------------------------------
def test_litserve_is_0_2():
    """The glue was written against 0.2.x (pyproject pins <0.3); 0.3 removes what 0.2 deprecated."""
    assert ls.__version__.startswith("0.2.")


# -- LitServer: the private methods the glue overrides or calls --------------------------------------------------
def test_init_manager_makes_the_queues_transport_and_registry_that_the_glue_replaces():
    """_init_manager(num_api_servers) returns the Manager and sets litapi_request_queues[api_path],
    transport_config (type "mp", manager), _transport, workers_setup_status and _shutdown_event."""
    assert params(ls.LitServer._init_manager) == ["self", "num_api_servers"]
    server = glue.InferenceServer(Doubler(), settings())._lit
    manager = ls.LitServer._init_manager(server, 1)
    try:
        assert manager is server.transport_config.manager
        assert server.transport_config.transport_type == "mp"
        assert list(server.litapi_request_queues) == ["/generate"]
        assert isinstance(server._transport, MPQueueTransport)
        assert dict(server.workers_setup_status) == {}
        assert not server._shutdown_event.is_set()
    finally:
        manager.shutdown()


def test_the_glue_init_manager_swaps_in_pipe_queues_and_the_batch_transport():
    server = glue.InferenceServer(Doubler(), settings())._lit
    manager = server._init_manager(1)
    try:
        assert type(server.litapi_request_queues["/generate"]) is type(mp.get_context("spawn").Queue())
        assert isinstance(server._transport, glue.BatchQueueTransport)
    finally:
        manager.shutdown()


def test_the_workers_get_the_api_paths_queue_from_litapi_request_queues():
    """launch_inference_worker hands each worker _get_request_queue(api_path), which reads litapi_request_queues:
    the dict the glue fills with its own queues and submit reads from."""
    assert "self._get_request_queue(lit_api.api_path)" in inspect.getsource(ls.LitServer.launch_inference_worker)
    assert params(ls.LitServer._get_request_queue) == ["self", "api_path"]
    server = glue.InferenceServer(Doubler(), settings())._lit
    server.litapi_request_queues["/generate"] = marker = object()
    assert server._get_request_queue("/generate") is marker


def test_start_server_signature_and_what_it_sets_before_forking():
    """_start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs) forks the HTTP
    processes; before each it sets app.response_queue_id (the id submit puts in queue items) and it gives uvicorn
    uvicorn_graceful_timeout (the drain time)."""
    assert params(ls.LitServer._start_server) == [
        "self", "port", "num_uvicorn_servers", "log_level", "sockets", "uvicorn_worker_type", "kwargs"]
    source = inspect.getsource(ls.LitServer._start_server)
    assert "self.app.response_queue_id = response_queue_id" in source
    assert "timeout_graceful_shutdown=self.uvicorn_graceful_timeout" in source
    assert ls.LitServer(ls.test_examples.SimpleLitAPI()).uvicorn_graceful_timeout == 30  # a plain attribute


def test_perform_graceful_shutdown_signature_and_callers():
    """_perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason) is where run (Ctrl-C, SIGTERM via our
    handler) and the worker monitor stop the server; the monitor's reason says "died" (InferenceServer.worker_died)."""
    assert params(ls.LitServer._perform_graceful_shutdown) == ["self", "manager", "uvicorn_workers", "shutdown_reason"]
    assert "self._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)" in inspect.getsource(
        ls.LitServer.run)
    monitor = inspect.getsource(ls.LitServer._start_worker_monitoring)
    assert "self._perform_graceful_shutdown(" in monitor and "died" in monitor
    assert "self._shutdown_event.is_set()" in monitor  # the glue stops the monitor by setting it


def test_run_calls_the_hooks_in_order_and_stops_on_keyboard_interrupt():
    """run: _init_manager, the workers (inference_workers), verify_worker_status, _start_server, then waits on
    _shutdown_event; KeyboardInterrupt (our SIGTERM handler raises it) leads to the graceful shutdown."""
    source = inspect.getsource(ls.LitServer.run)
    steps = ["self._init_manager(num_api_servers)", "self.inference_workers = []", "self.verify_worker_status()",
             "self._start_server(", "self._shutdown_event.wait()", "except KeyboardInterrupt",
             "self._perform_graceful_shutdown("]
    positions = [source.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions))
    assert positions == sorted(positions)
    assert {"host", "port", "num_api_servers", "log_level", "generate_client_file",
            "api_server_worker_type"} <= set(params(ls.LitServer.run))


def test_worker_setup_status_values():
    """workers_setup_status maps each worker to one of these strings (workers_ready, verify_worker_status)."""
    assert (WorkerSetupStatus.READY, WorkerSetupStatus.ERROR) == ("ready", "error")


def test_the_constructor_options_the_glue_passes_and_the_request_timeout():
    server = glue.InferenceServer(Doubler(), settings(timeout=12.0, workers_per_device=3))
    assert server._lit.devices == ["cpu"]
    assert server.num_workers == 3
    assert server._api.request_timeout == 12.0  # LitServer(timeout=) is the queue timeout the loop applies
    assert server._lit.lit_api is server._api
    assert server._lit.healthcheck_path == "/health"


# -- the FastAPI app --------------------------------------------------------------------------------------------
def test_litserver_adds_gzip_to_user_middleware():
    """LitServer adds GZipMiddleware to app.user_middleware for a non-streaming API; the glue filters it out."""
    plain = ls.LitServer(ls.test_examples.SimpleLitAPI())
    assert GZipMiddleware in [m.cls for m in plain.app.user_middleware]
    server = glue.InferenceServer(Doubler(), settings())
    assert GZipMiddleware not in [m.cls for m in server.app.user_middleware]


def test_litservers_own_routes_are_removed():
    """LitServer registers GET /, its health check and the API route on app.router.routes (each with .path)."""
    plain = ls.LitServer(ls.test_examples.SimpleLitAPI(api_path="/generate"))
    paths = [getattr(r, "path", None) for r in plain.app.router.routes]
    assert {"/", "/health", "/generate"} <= set(paths)
    server = glue.InferenceServer(Doubler(), settings())
    assert not {"/", "/health", "/generate"} & {getattr(r, "path", None) for r in server.app.router.routes}
    assert "/info" in {getattr(r, "path", None) for r in server.app.router.routes}  # kept, as before


# -- the request queue and the worker loop ----------------------------------------------------------------------
def test_a_queue_item_is_response_queue_id_uid_timestamp_payload_and_a_batch_goes_through_predict():
    """LitServe's loop reads (response_queue_id, uid, time.monotonic(), payload), hands predict the payloads as a
    list, and sends (uid, (result, "OK", response_type, worker_id)) to consumer response_queue_id."""
    api = glue.InferenceServer(Doubler(), settings())._api
    now = time.monotonic()
    sent = run_loop(api, [(0, 7, now, 1), (0, 8, now, 2), (1, 9, now, 3)])
    assert [(consumer, uid, result, status) for consumer, (uid, (result, status, _, _)) in sent] == [
        (0, 7, 2, LitAPIStatus.OK), (0, 8, 4, LitAPIStatus.OK), (1, 9, 6, LitAPIStatus.OK)]


def test_a_failed_batch_answers_each_item_with_the_pickled_exception():
    api = glue.InferenceServer(Doubler(), settings())._api
    sent = run_loop(api, [(0, 1, time.monotonic(), "boom")])
    [(_, (uid, (data, status, _, _)))] = sent
    assert (uid, status) == (1, LitAPIStatus.ERROR)
    error = pickle.loads(data)
    assert isinstance(error, ValueError) and str(error) == "boom"


def test_an_item_older_than_the_timeout_is_answered_with_http_504():
    api = glue.InferenceServer(Doubler(), settings(timeout=1.0))._api
    sent = run_loop(api, [(0, 1, time.monotonic() - 5, 1), (0, 2, time.monotonic(), 1)], batch=1)
    [(_, (uid, (data, status, _, _))), (_, (_, (_, fresh, _, _)))] = sent
    assert (uid, status, fresh) == (1, LitAPIStatus.ERROR, LitAPIStatus.OK)
    assert isinstance(data, HTTPException) and data.status_code == 504


def test_get_batch_requests_is_the_loops_hook_and_reads_max_batch_size_from_the_api_it_is_given():
    """run_batched_loop calls self.get_batch_requests(lit_api, request_queue, transport) -> (batch, timed_out);
    the collection reads lit_api.max_batch_size for each item, so the object passed in (FairShare) caps it."""
    assert params(BatchedLoop.get_batch_requests) == ["self", "lit_api", "request_queue", "transport"]
    assert "self.get_batch_requests(" in inspect.getsource(BatchedLoop.run_batched_loop)

    api = glue.InferenceServer(Doubler(), settings(max_batch_size=8))._api
    reads = 0

    class Capped(glue.FairShare):
        @property
        def max_batch_size(self):
            nonlocal reads
            reads += 1
            return 2

    requests: queue.Queue = queue.Queue()
    for uid in range(5):
        requests.put((0, uid, time.monotonic(), uid))
    batch, timed_out = BatchedLoop().get_batch_requests(Capped(api), requests, Recorder())
    assert [uid for _, uid, _ in batch] == [0, 1] and timed_out == []
    assert reads >= 3  # once per item collected, and once more to stop


def test_the_pipe_queue_has_a_reader_that_can_wait():
    """multiprocessing.Queue._reader.poll(timeout): what the idle worker sleeps on."""
    q = mp.get_context("spawn").Queue()
    assert q._reader.poll(0.01) is False
    q.put(1)
    assert q._reader.poll(5) is True
    assert q.get(timeout=5) == 1


# -- the results transport and the response buffer --------------------------------------------------------------
def test_mp_queue_transport_keeps_its_queues_and_is_rebuilt_from_them_when_pickled():
    assert params(MPQueueTransport.__init__) == ["self", "manager", "queues"]
    assert params(MPQueueTransport.areceive) == ["self", "consumer_id", "timeout", "block"]
    queues = [queue.Queue()]
    transport = MPQueueTransport(None, queues)
    assert transport._queues is queues
    assert transport.__reduce__() == (MPQueueTransport, (None, queues))


def test_the_response_buffer_task_stores_the_answer_and_sets_the_event():
    """The HTTP process's task reads (uid, (data, status, response_type, worker_id)) from transport.areceive and
    sets response_buffer[uid].response = (data, status) and its event; an unknown uid is dropped."""
    assert params(response_queue_to_buffer) == ["transport", "response_buffer", "consumer_id", "litapi_connector"]
    server = glue.InferenceServer(Doubler(), settings())
    assert server._lit.response_buffer == {}
    messages = [(99, ("lost", LitAPIStatus.OK, None, 0)), (5, ("pixels", LitAPIStatus.OK, None, 0))]

    class Feed:
        async def areceive(self, consumer_id, timeout=None, block=True):
            if messages:
                return messages.pop(0)
            raise asyncio.CancelledError

    async def main():
        item = ResponseBufferItem(event=asyncio.Event())
        buffer = {5: item}
        await response_queue_to_buffer(Feed(), buffer, 0, _LitAPIConnector(server._api))
        return item

    item = asyncio.run(main())
    assert item.event.is_set() and list(item.response) == ["pixels", LitAPIStatus.OK]  # a list: (data, status)


def submitting_server() -> tuple[glue.InferenceServer, queue.Queue]:
    """An InferenceServer in this process whose submit puts its items on the returned queue (as for worker 0)."""
    server = glue.InferenceServer(Doubler(), settings())
    requests: queue.Queue = queue.Queue()
    server._lit.litapi_request_queues["/generate"] = requests
    server.app.response_queue_id = 0
    return server, requests


async def next_item(requests: queue.Queue) -> tuple:
    """The next item submit queued, once it is there: (response queue id, uid, timestamp, payload)."""
    while requests.empty():
        await asyncio.sleep(0.001)
    return requests.get()


def answer(server: glue.InferenceServer, uid, data, status) -> None:
    """Answer the item `uid` as the response buffer task does: store (data, status) and set its event."""
    entry = server._lit.response_buffer[uid]
    entry.response = (data, status)
    entry.event.set()


def test_submit_puts_an_item_and_returns_its_answer():
    """InferenceServer.submit end to end in one process: the item it queues, the answer it reads from the buffer."""
    server, requests = submitting_server()

    async def main():
        task = asyncio.ensure_future(server.submit(21))
        consumer, uid, timestamp, payload = await next_item(requests)
        assert (consumer, payload) == (0, 21) and server.in_flight == 1
        answer(server, uid, 42, LitAPIStatus.OK)
        return await task

    assert asyncio.run(main()) == 42
    assert server.in_flight == 0 and server._lit.response_buffer == {}


@pytest.mark.parametrize("data", [pickle.dumps(ValueError("boom")), HTTPException(504, "Request timed out")])
def test_submit_raises_worker_error_with_the_exception(data):
    server, requests = submitting_server()

    async def main():
        task = asyncio.ensure_future(server.submit(1))
        answer(server, (await next_item(requests))[1], data, LitAPIStatus.ERROR)
        await task

    with pytest.raises(glue.WorkerError) as caught:
        asyncio.run(main())
    assert type(caught.value.error) in (ValueError, HTTPException)
