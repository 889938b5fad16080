"""The LitAPI: each inference worker loads every served model once, then turns batches of image jobs into pixels.

Owns worker setup (backends, signals) only; validation, batching policy and encoding live in their own modules.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path

import litserve as ls
from litserve.loops.simple_loops import BatchedLoop

from ganserve.serve.batching import ImageJob, ImageResult, run_jobs


class FairShare:
    """The LitAPI as LitServe's batch collection sees it, except that `max_batch_size` is this worker's fair share of
    the images in the server, ceil(images / workers), between 1 and the configured maximum; it is read again for each
    request collected. So a batch closes as soon as it holds its share, rather than waiting out the batch window
    for requests that do not exist or taking requests that another idle worker could start on at once."""

    def __init__(self, api: GeneratorAPI):
        self._api = api

    def __getattr__(self, name):
        return getattr(self._api, name)

    @property
    def max_batch_size(self) -> int:
        api = self._api
        return max(1, min(api.max_batch_size, -(-api.demand.value // api.num_workers)))


class IdleWaitBatchedLoop(BatchedLoop):
    """LitServe's batched loop, except that an idle worker sleeps until a request arrives (or 1 s passes) instead of
    polling its queue every millisecond, so that the CPU stays with whoever needs it; that batches are capped at the
    worker's fair share (FairShare); and that the results of a batch leave together, as one message, when the worker
    comes back for the next batch (benchmarks/README.md)."""

    def get_batch_requests(self, lit_api, request_queue, transport):
        getattr(transport, "flush", lambda: None)()  # the previous batch's results (BatchQueueTransport holds them)
        wait = getattr(getattr(request_queue, "_reader", None), "poll", None)  # a pipe-backed multiprocessing.Queue
        if wait is not None:
            wait(1.0)
        if getattr(lit_api, "demand", None) is not None:
            lit_api = FairShare(lit_api)
        return super().get_batch_requests(lit_api, request_queue, transport)


class GeneratorAPI(ls.LitAPI):
    def __init__(
        self, models: dict[str, Path], backend: str, state_dir: Path, cpu_threads: int | None = None,
        precision: str | None = None, **litapi_options
    ):
        # The batched loop even at max_batch_size=1, so that predict always receives a list.
        super().__init__(api_path="/generate", loop=IdleWaitBatchedLoop(), **litapi_options)
        self.model_dirs = models
        self.backend_name = backend
        self.state_dir = state_dir  # where workers report to the main process: the backends chosen, or why none loaded
        self.cpu_threads = cpu_threads  # torch intra-op threads when the device is the CPU
        self.precision = precision  # of the torch/compile backends on CUDA (None: their default)
        self.stopping = mp.get_context("spawn").Event()  # set by the main process right before it stops the workers
        # Images admitted and not yet answered, kept by the API process (Dispatcher), read by the workers (FairShare)
        self.demand = mp.get_context("spawn").RawValue("q", 0)
        self.num_workers = 1  # inference workers in all; the server sets it once it knows its devices

    def setup(self, device: str) -> None:
        from ganserve.inference.registry import load_backend

        self._watch_signals()
        if str(device).startswith("cpu"):
            from ganserve.devices import setup_cpu_inference

            setup_cpu_inference(self.cpu_threads)
        try:
            self.backends = {name: load_backend(d, self.backend_name, device, precision=self.precision)
                             for name, d in self.model_dirs.items()}
        except Exception as e:
            _write(Path(self.state_dir) / "error.txt", f"{type(e).__name__}: {e}".splitlines()[0])
            raise
        _write(Path(self.state_dir) / "backends.json", json.dumps({n: b.name for n, b in self.backends.items()}))

    def decode_request(self, request: ImageJob) -> ImageJob:
        return request  # validated before it was queued

    def predict(self, jobs: list[ImageJob]) -> list[ImageResult]:
        return run_jobs(self.backends, jobs)

    def encode_response(self, output: ImageResult) -> ImageResult:
        return output  # raw pixels; the HTTP process encodes them off the device's critical path

    def _watch_signals(self) -> None:
        """Ctrl-C, or a SIGTERM sent to the whole process group, reaches us too; but the main process drains first
        and stops us afterwards. So: ignore SIGINT; exit on SIGTERM only once it says so, or once it is gone."""
        parent = os.getppid()

        def on_sigterm(signum, frame):
            if self.stopping.is_set() or os.getppid() != parent:
                os._exit(0)

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, on_sigterm)
        if sys.platform == "linux":  # SIGTERM when the main process dies, even by SIGKILL
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
