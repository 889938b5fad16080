"""Everything ganserve knows about LitServe, behind one small interface; the rest of ganserve.serve never imports it.

The interface. ganserve hands over a *worker*: a plain, picklable object with `setup(device)` (load the models; it
runs once in each inference process) and `predict(items) -> results` (one result per item, in order). It gets back
an `InferenceServer`:

    server = InferenceServer(worker, ServerSettings(...))
    server.app                   # the FastAPI app, without LitServe's own /, /health and API-path routes
    await server.submit(item)    # HTTP process: one item in, its result out (or WorkerError)
    server.in_flight             # items submitted and not yet answered (shared memory; the workers read it too)
    server.workers_ready()       # (workers that have loaded, workers)
    server.run(host, port, log_level, on_ready=..., on_serving=...)  # blocks until SIGTERM/Ctrl-C, then drains

Processes. The main process runs `run`: it spawns the inference workers (each gets a pickled copy of the worker and
of the queues), waits until every one has loaded and calls `on_ready`; then it forks one HTTP process (uvicorn on
`app`), which inherits everything the main process holds, routes and queues included, and calls `on_serving`. Then
it supervises: a worker that dies stops the server.

A request's path across the process hop:

1. HTTP process, `submit(item)`: the item gets a request id (a counter: ids need only be unique within this HTTP
   process, whose results queue is its own). Under that id it registers a `ResponseBufferItem` (an asyncio.Event and
   a slot for the response) in `LitServer.response_buffer`, and only then puts `(response_queue_id, uid,
   time.monotonic(), item)` on the request queue, a `multiprocessing.Queue` shared by all the workers.
   `response_queue_id` says which HTTP process's results queue the answer goes to (0: there is one).
2. Inference worker, LitServe's `BatchedLoop`: its `get_batch_requests` (ours: sleep on the queue's pipe while idle,
   send the previous batch's results, then LitServe's own) takes items off the queue until the batch holds
   `max_batch_size` (read again for each item: the worker's fair share, see FairShare) or `batch_timeout` has passed.
   An item older than `timeout` is answered at once with HTTPException(504). The batch's items go through
   `decode_request` (as they are), `predict` (worker.predict) and `encode_response` (as they are); each result goes
   to `transport.send((uid, (result, status, response_type, worker_id)), consumer_id=response_queue_id)`, status
   "OK", or "ERROR" with the exception pickled. BatchQueueTransport holds them and sends a batch's results as one
   list per results queue when the worker comes back for its next batch.
3. HTTP process, LitServe's `response_queue_to_buffer` task (started by the app's lifespan): `transport.areceive`
   (ours unpacks the list) returns one `(uid, (result, status, ...))` at a time; the task stores `(result, status)`
   in `response_buffer[uid].response` and sets the event. (An id no longer in the buffer is dropped.)
4. `submit` wakes up, removes its buffer entry, and returns the result or raises WorkerError.

Shutdown (SIGTERM or Ctrl-C in the main process): the HTTP process stops accepting and gets `drain_seconds` to
finish the requests in flight, while the workers still run; then the workers are stopped, then the Manager process.

LitServe's public extension points do much of this: a LitAPI subclass (setup, decode_request, predict,
encode_response), LitAPI's `loop`, `max_batch_size`, `batch_timeout` and `api_path`, LitServer's constructor
options, and `BatchedLoop.get_batch_requests`, the hook LitServe's own loops are built on. The rest needs names
LitServe does not document (those with a leading underscore are marked `# private:` below, with the reason):

- overridden: `LitServer._init_manager` (the queues and the transport), `_start_server` (after the fork),
  `_perform_graceful_shutdown` (drain first, once), and the public `verify_worker_status` (wait for all);
- set or read: `LitServer._transport`, `_shutdown_event`, `litapi_request_queues`, `response_buffer`,
  `workers_setup_status`, `inference_workers`, `transport_config`, `uvicorn_graceful_timeout`, `app.response_queue_id`;
  `MPQueueTransport._queues`; `multiprocessing.Queue._reader`; FastAPI's `app.router.routes` and Starlette's
  `app.user_middleware` (edited in place);
- the message formats: queue items, results and `ResponseBufferItem`, as described above.

tests/test_litserve_contract.py pins each of these, one test per assumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import litserve as ls
from litserve.loops import BatchedLoop
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the hosts LitServer.run accepts
PORTS = (1024, 65535)  # the ports LitServer.run accepts (inclusive)


class Worker(Protocol):
    """What runs in each inference process: ganserve's code, pickled into it."""

    def setup(self, device: str) -> None: ...

    def predict(self, items: list) -> list: ...


@dataclass
class ServerSettings:
    api_path: str  # LitServe's route for the API (removed from `app`; items arrive through `submit`)
    accelerator: str  # "cpu" or "cuda"
    devices: int | list[int]  # how many GPUs, or which
    workers_per_device: int
    max_batch_size: int  # items per batch, at most (a worker takes less: its fair share)
    batch_timeout: float  # seconds a batch waits to fill up to its fair share
    timeout: float  # seconds an item may wait in the queue before it fails with HTTPException(504)
    drain_seconds: float  # how long in-flight requests get after SIGTERM/Ctrl-C


class WorkerError(Exception):
    """A worker answered an item with an error. `error` is the exception its predict raised, an HTTPException(504)
    when the item waited longer than the timeout, or None when its worker died."""

    def __init__(self, error: Any):
        super().__init__(error)
        self.error = error


class WorkersFailed(Exception):
    """A worker's setup raised, or a worker died, before every worker was ready; all have been stopped."""


# -- the inference workers' side -------------------------------------------------------------------------------
class FairShare:
    """The LitAPI as LitServe's batch collection sees it, except that `max_batch_size` is this worker's fair share of
    the items in the server, ceil(items / workers), between 1 and the configured maximum; it is read again for each
    item collected. So a batch closes as soon as it holds its share, rather than waiting out the batch window
    for items that do not exist or taking items that another idle worker could start on at once."""

    def __init__(self, api):
        self._api = api

    def __getattr__(self, name):
        return getattr(self._api, name)

    @property
    def max_batch_size(self) -> int:
        api = self._api
        return max(1, min(api.max_batch_size, -(-api.demand.value // api.num_workers)))


class IdleWaitBatchedLoop(BatchedLoop):
    """LitServe's batched loop, except that an idle worker sleeps until an item arrives (or 1 s passes) instead of
    polling its queue every millisecond, so that the CPU stays with whoever needs it; that batches are capped at the
    worker's fair share (FairShare); and that the results of a batch leave together, as one message, when the worker
    comes back for the next batch (BatchQueueTransport)."""

    def get_batch_requests(self, lit_api, request_queue, transport):
        getattr(transport, "flush", lambda: None)()  # the previous batch's results (BatchQueueTransport holds them)
        # private: multiprocessing.Queue has no public "wait until readable"; its pipe's reader end does (poll).
        wait = getattr(getattr(request_queue, "_reader", None), "poll", None)
        if wait is not None:
            wait(1.0)
        if getattr(lit_api, "demand", None) is not None:
            lit_api = FairShare(lit_api)
        return super().get_batch_requests(lit_api, request_queue, transport)


class BatchQueueTransport(MPQueueTransport):
    """LitServe's pipe-queue transport, with `send` deferred until `flush` in the workers and lists unpacked in
    `areceive` in the HTTP process. Each process gets its own copy (pickled), so the buffers are never shared.

    LitServe's loop hands each item's result to `send` one by one; here they are held until the worker asks for its
    next batch and then go as one list, which the HTTP process unpacks again. Per item that saves a pickled message,
    a pipe write, and in the HTTP process a thread hop and an event-loop wake-up."""

    def __init__(self, manager, queues: list):
        super().__init__(manager, queues)
        self._held: dict[int, list] = {}  # inference worker: consumer id -> results not yet sent
        self._received: deque = deque()  # HTTP process: results of the last message not yet handed out

    def send(self, item: Any, consumer_id: int) -> None:
        self._held.setdefault(consumer_id, []).append(item)

    def flush(self) -> None:
        """Send what `send` has held, one message per HTTP process."""
        held, self._held = self._held, {}
        for consumer_id, items in held.items():
            self._queues[consumer_id].put(items)  # private: MPQueueTransport keeps its queues there

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


class _WorkerAPI(ls.LitAPI):
    """The LitAPI LitServe runs: the worker's setup and predict, items and results passed through as they are.

    Also carries what the processes share: `demand` (items in flight, written by the HTTP process, read by FairShare
    in the workers) and `stopping` (set by the main process right before it stops the workers)."""

    def __init__(self, worker: Worker, settings: ServerSettings):
        # The batched loop even at max_batch_size=1, so that predict always receives a list.
        super().__init__(
            api_path=settings.api_path, loop=IdleWaitBatchedLoop(), max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
        )
        self.worker = worker
        self.stopping = mp.get_context("spawn").Event()
        self.demand = mp.get_context("spawn").RawValue("q", 0)
        self.num_workers = 1  # inference workers in all; InferenceServer sets it once LitServer knows its devices

    def setup(self, device: str) -> None:
        _watch_signals(self.stopping)
        self.worker.setup(device)

    def decode_request(self, request):
        return request  # validated before it was queued

    def predict(self, items: list) -> list:
        return self.worker.predict(items)

    def encode_response(self, output):
        return output  # the HTTP process does what else is needed, off the device's critical path


def _watch_signals(stopping) -> None:
    """In an inference worker. Ctrl-C, or a SIGTERM sent to the whole process group, reaches it too; but the main
    process drains first and stops the workers afterwards (LitServer terminates them: SIGTERM). So: ignore SIGINT;
    exit on SIGTERM only once `stopping` says so, or once the main process is gone."""
    parent = os.getppid()

    def on_sigterm(signum, frame):
        if stopping.is_set() or os.getppid() != parent:
            os._exit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)
    if sys.platform == "linux":  # SIGTERM when the main process dies, even by SIGKILL
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- the main process's side -----------------------------------------------------------------------------------
class _LitServer(ls.LitServer):
    """LitServer with pipe-backed queues, that waits for every worker, runs our start-up hooks, drains before it
    stops the workers, and stops exactly once."""

    def __init__(self, api: _WorkerAPI, drain_seconds: float, **kwargs):
        super().__init__(api, **kwargs)
        # Public, undocumented: uvicorn's timeout_graceful_shutdown, and how long shutdown waits for the HTTP process.
        self.uvicorn_graceful_timeout = drain_seconds
        self.on_ready: Callable[[], None] | None = None
        self.on_serving: Callable[[], None] | None = None
        self.stop_reason = ""
        self._stop_lock = threading.Lock()
        self._stopped = False
        # LitServer adds gzip to every non-streaming API, with no option to leave it out; but image bytes do not gzip,
        # and a gzip layer would hold streamed parts back until the end. user_middleware is Starlette's list of them.
        self.app.user_middleware = [m for m in self.app.user_middleware if m.cls is not GZipMiddleware]

    def _init_manager(self, num_api_servers: int):
        """private: LitServer.run calls this to make the request queues and the results transport, with no option to
        choose them. LitServe's queues are Manager proxies: every put and get, and every 1 ms poll of an idle worker,
        is a round trip through the manager process. Pipe-backed queues, handed to the processes as they start, carry
        the same items without that hop, and BatchQueueTransport sends a batch's results as one message."""
        manager = super()._init_manager(num_api_servers)
        if self.transport_config.transport_type == "mp":
            ctx = mp.get_context("spawn")  # the inference workers' context; the HTTP process, forked, inherits them
            for path in self.litapi_request_queues:
                self.litapi_request_queues[path] = ctx.Queue()
            # private: LitServer keeps the transport it hands to the workers and the lifespan task in _transport.
            self._transport = BatchQueueTransport(manager, [ctx.Queue() for _ in range(num_api_servers)])
        return manager

    def verify_worker_status(self) -> None:
        """Public, and called by LitServer.run between starting the workers and the HTTP process; LitServe's own
        returns once *any* worker is ready. Ours waits for every one, then runs on_ready; WorkersFailed if one fails."""
        try:
            while True:
                status = dict(self.workers_setup_status)
                if len(status) == len(self.inference_workers) and all(
                    v == WorkerSetupStatus.READY for v in status.values()
                ):
                    if self.on_ready is not None:
                        self.on_ready()
                    return
                if WorkerSetupStatus.ERROR in status.values() or not all(p.is_alive() for p in self.inference_workers):
                    time.sleep(0.2)  # let the worker finish reporting why
                    raise WorkersFailed("a worker could not start")
                time.sleep(0.05)
        except BaseException:
            self._stop_children()
            raise

    def _stop_children(self) -> None:
        self.lit_api.stopping.set()
        for p in self.inference_workers:
            p.terminate()
        for p in self.inference_workers:
            p.join(5)
            if p.is_alive():
                p.kill()
        with contextlib.suppress(Exception):
            self.transport_config.manager.shutdown()

    def _start_server(self, port, *args, **kwargs):
        """private: LitServer.run forks the HTTP process here; there is no hook after it."""
        # The forked HTTP process inherits this: once uvicorn has drained on Ctrl-C it re-raises SIGINT, to be ignored.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            workers = super()._start_server(port, *args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.on_serving is not None:
            self.on_serving()
        return workers

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        """private: LitServer.run (on Ctrl-C) and its worker monitor (a worker died) both stop the server here. Ours
        drains the HTTP process while the workers still run, lets the workers exit, and runs only once."""
        if threading.current_thread() is threading.main_thread():  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with self._stop_lock:  # the worker monitor may get here too; the second caller waits for the first
            if self._stopped:
                return
            self.stop_reason = shutdown_reason
            # Stop the worker monitor (private: LitServer's monitor loop and run wait on _shutdown_event). From a
            # thread of its own: a signal may have cut this thread's manager connection short in the middle of a
            # call, and a second call on it would wait forever.
            setter = threading.Thread(target=self._shutdown_event.set, daemon=True)
            setter.start()
            setter.join(2)
            self._drain(uvicorn_workers)  # while the inference workers still run
            self.lit_api.stopping.set()  # the workers now exit on SIGTERM (they ignore one sent before)
            super()._perform_graceful_shutdown(manager, {}, shutdown_reason)  # the HTTP process is gone already
            self._stopped = True

    def _drain(self, uvicorn_workers) -> None:
        """SIGTERM the HTTP process: it stops accepting, finishes in-flight responses (up to the drain time), exits."""
        processes = [w for w in uvicorn_workers.values() if hasattr(w, "terminate")]
        for w in processes:
            if w.is_alive():
                w.terminate()
        for w in processes:
            w.join(self.uvicorn_graceful_timeout + 1)
            if w.is_alive():
                w.kill()


def _sigterm_handler(main_pid: int):
    """SIGTERM in the main process acts as Ctrl-C, on which LitServer.run drains and stops its processes. The
    processes it forks inherit this handler: they ignore a SIGTERM sent to the whole group (the main process stops
    them in order) unless the main process is gone."""

    def handler(signum, frame):
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        if os.getppid() != main_pid:
            os._exit(0)

    return handler


class InferenceServer:
    """A LitServer running `worker` in its inference processes; see the module docstring for the interface."""

    def __init__(self, worker: Worker, settings: ServerSettings):
        self._api = _WorkerAPI(worker, settings)
        self._lit = _LitServer(
            self._api, settings.drain_seconds, accelerator=settings.accelerator, devices=settings.devices,
            workers_per_device=settings.workers_per_device, timeout=settings.timeout,
        )
        self._api.num_workers = len(self._lit.devices) * settings.workers_per_device
        self.app = self._lit.app
        # LitServe's GET /, its text health check and its POST-only API route: ganserve installs its own.
        # (FastAPI has no public way to remove a route; router.routes is the list it matches against.)
        replaced = ("/", self._lit.healthcheck_path, settings.api_path)
        self.app.router.routes[:] = [r for r in self.app.router.routes if getattr(r, "path", None) not in replaced]
        self._api_path = settings.api_path
        self._ids = itertools.count()  # request ids: unique within the HTTP process, whose results queue is its own
        self._queue_pid = -1

    @property
    def num_workers(self) -> int:
        return self._api.num_workers

    @property
    def in_flight(self) -> int:
        """Items submitted and not yet answered (queued or on the device)."""
        return self._api.demand.value

    @property
    def worker_died(self) -> bool:
        """Whether the server stopped because an inference worker died (LitServer's monitor says so in its reason)."""
        return "died" in self._lit.stop_reason

    def workers_ready(self) -> tuple[int, int]:
        """(workers that have loaded, workers); raises once the server is stopping (the registry is gone)."""
        status = dict(self._lit.workers_setup_status)
        return sum(v == WorkerSetupStatus.READY for v in status.values()), len(status)

    async def submit(self, item: Any) -> Any:
        """In the HTTP process: queue `item`, wait for its batch, return its result (WorkerError on failure)."""
        demand = self._api.demand
        uid, entry = next(self._ids), ResponseBufferItem(event=asyncio.Event())
        buffer = self._lit.response_buffer
        buffer[uid] = entry  # registered before it is queued, so the answer cannot arrive unseen
        demand.value += 1
        try:
            self._queue().put((self.app.response_queue_id, uid, time.monotonic(), item))
            await entry.event.wait()
            data, status = entry.response
        finally:
            buffer.pop(uid, None)
            demand.value -= 1
        if status != LitAPIStatus.OK:
            if isinstance(data, bytes):  # put_error_response pickles the exception
                with contextlib.suppress(Exception):
                    data = pickle.loads(data)
            raise WorkerError(data)
        return data

    def _queue(self):
        # LitServer has no accessor for an API's request queue but this dict, which _init_manager filled (with ours)
        # and from which it gave each worker its queue.
        queue = self._lit.litapi_request_queues[self._api_path]
        if self._queue_pid != os.getpid():  # once per process: exiting must not wait on a queue that nobody reads
            getattr(queue, "cancel_join_thread", lambda: None)()
            self._queue_pid = os.getpid()
        return queue

    def run(self, host: str, port: int, log_level: str, on_ready: Callable[[], None] | None = None,
            on_serving: Callable[[], None] | None = None) -> None:
        """Start the workers; once all have loaded call `on_ready` (what it sets up, the HTTP process inherits); start
        the HTTP process and call `on_serving`; serve until SIGTERM or Ctrl-C, then drain and stop every process.
        WorkersFailed when a worker cannot start; `worker_died` afterwards says whether one died while serving."""
        self._lit.on_ready, self._lit.on_serving = on_ready, on_serving
        previous = signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
        try:
            self._lit.run(
                host=host, port=port, num_api_servers=1, log_level=log_level, generate_client_file=False,
                api_server_worker_type="process",
            )
        except KeyboardInterrupt:
            pass  # during start-up: verify_worker_status has stopped the workers already
        finally:
            signal.signal(signal.SIGTERM, previous)
