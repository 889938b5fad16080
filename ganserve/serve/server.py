"""Building and running the server: options, which models, the LitServer with our routes, and a clean shutdown.

Owns the process lifecycle: serve only once every worker has loaded every model; SIGTERM/Ctrl-C drain, no orphans.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import litserve as ls
import torch
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from ganserve.devices import cpu_cores, cpu_threads_per_worker, resolve_device
from ganserve.errors import ServeError, UsageError
from ganserve.models.weights import bundled_models, load_config, resolve_model
from ganserve.serve.api import GeneratorAPI
from ganserve.serve.dispatch import Dispatcher
from ganserve.serve.encoding import Encoder
from ganserve.serve.metrics import Metrics
from ganserve.serve.params import MODEL_NAME_PATTERN
from ganserve.serve.routes import Service, install
from ganserve.serve.transport import BatchQueueTransport

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe accepts
DRAIN_SECONDS = 7.0  # in-flight requests get this long after SIGTERM/Ctrl-C; the rest of shutdown takes well under 3 s


@dataclass
class ServeOptions:
    """`ganserve serve` flags, one field each."""

    models: list[str] = field(default_factory=list)  # model directories or bundled names, optionally NAME=DIR
    backend: str = "auto"
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    batch_timeout_ms: float = 5.0
    devices: int = 1
    workers_per_device: int | None = None  # default: 1 per GPU; on the CPU one per core, at most 4
    max_queue: int = 512  # images queued or on the device before new requests get 503
    max_seeds: int = 1024  # per POST request; more is a 413
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    encode_threads: int | None = None
    cpu_threads: int | None = None  # per worker on CPU; default: the cores less one, shared among the workers (>= 1)
    precision: str | None = None  # torch/compile on CUDA: fp32, fp16 or bf16 (default: TorchBackend's)
    timeout_s: float = 60.0  # an image that waited this long in the queue fails with 504
    log_level: str = "info"


def named_models(specs: list[str]) -> dict[str, Path]:
    """Model name -> directory. A name is the directory's name unless given as NAME=DIR; the first is the default."""
    if not specs:
        zoo = bundled_models()
        if not zoo:
            raise ServeError(
                "no model to serve and this installation bundles none: pass a model directory, "
                "e.g. `ganserve init --arch stylegan --resolution 64 --out m64 && ganserve serve m64`"
            )
        return dict(zoo)
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not re.match(MODEL_NAME_PATTERN, name):
            name, path = "", spec
        directory = resolve_model(path)
        load_config(directory)  # fail here, in one line, rather than in a worker
        name = name or directory.resolve().name
        if not re.match(MODEL_NAME_PATTERN, name):
            raise ServeError(f"{directory}: cannot use {name!r} as a model name; name it with NAME={path}")
        if name in out:
            raise ServeError(f"two models are named {name!r}; name them with NAME=DIR")
        out[name] = directory
    return out


def resolve_backend(name: str) -> str:
    from ganserve.inference import BACKEND_CHOICES as choices

    if name not in choices:
        raise ServeError(f"backend must be one of {', '.join(choices)}, got {name!r}")
    return name


class GanServer(ls.LitServer):
    """LitServer that waits for every worker, reports a worker's load error in one line, and stops exactly once."""

    def __init__(self, *args, opts: ServeOptions, state_dir: Path, summary: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.opts, self.state_dir, self.summary = opts, state_dir, summary
        self.backend_names: dict[str, str] = {}  # model -> backend the workers chose (known once they are ready)
        self.uvicorn_graceful_timeout = DRAIN_SECONDS
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.stop_reason = ""
        # PNG bytes do not gzip; and a gzip layer would hold streamed parts back until the end.
        self.app.user_middleware = [m for m in self.app.user_middleware if m.cls is not GZipMiddleware]

    def _init_manager(self, num_api_servers: int):
        """LitServe's queues are Manager proxies: every put and get, and every 1 ms poll of an idle worker, is a round
        trip through the manager process (an idle server burned a seventh of a core on it). Pipe-backed queues,
        handed to the processes as they start, carry the same items without that hop, and the results of a batch travel
        as one message (BatchQueueTransport; benchmarks/README.md)."""
        manager = super()._init_manager(num_api_servers)
        if self.transport_config.transport_type == "mp":
            ctx = mp.get_context("spawn")  # the inference workers' context; the API process, forked, inherits them
            for path in self.litapi_request_queues:
                self.litapi_request_queues[path] = ctx.Queue()
            self._transport = BatchQueueTransport(manager, [ctx.Queue() for _ in range(num_api_servers)])
        return manager

    def verify_worker_status(self) -> None:
        try:
            while True:
                status = dict(self.workers_setup_status)
                if len(status) == len(self.inference_workers) and all(
                    v == WorkerSetupStatus.READY for v in status.values()
                ):
                    self.backend_names.update(json.loads((self.state_dir / "backends.json").read_text()))
                    return
                if WorkerSetupStatus.ERROR in status.values() or not all(p.is_alive() for p in self.inference_workers):
                    time.sleep(0.2)  # let the error file be written
                    error = self.state_dir / "error.txt"
                    reason = error.read_text().strip() if error.exists() else ""
                    raise ServeError(f"a worker could not load the models: {reason or 'see the log above'}")
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
        # The forked API process inherits this: once uvicorn has drained on Ctrl-C it re-raises SIGINT, to be ignored.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            workers = super()._start_server(port, *args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)
        backends = ", ".join(sorted(set(self.backend_names.values())))
        print(f"ganserve: serving {self.summary} with {backends} at http://{self.opts.host}:{port}", flush=True)
        return workers

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        if threading.current_thread() is threading.main_thread():  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with self._stop_lock:  # the worker monitor may get here too; the second caller waits for the first
            if self._stopped:
                return
            self.stop_reason = shutdown_reason
            # Stop the worker monitor. From a thread of its own: a signal may have cut this thread's manager
            # connection short in the middle of a call, and a second call on it would wait forever.
            setter = threading.Thread(target=self._shutdown_event.set, daemon=True)
            setter.start()
            setter.join(2)
            self._drain(uvicorn_workers)  # while the inference workers still run
            self.lit_api.stopping.set()  # the workers now exit on SIGTERM (they ignore one sent before)
            super()._perform_graceful_shutdown(manager, {}, shutdown_reason)
            self._stopped = True

    def _drain(self, uvicorn_workers) -> None:
        """SIGTERM the API process: it stops accepting, finishes in-flight responses (up to DRAIN_SECONDS), exits."""
        processes = [w for w in uvicorn_workers.values() if hasattr(w, "terminate")]
        for w in processes:
            if w.is_alive():
                w.terminate()
        for w in processes:
            w.join(DRAIN_SECONDS + 1)
            if w.is_alive():
                w.kill()


def default_workers(device: torch.device) -> int:
    """Inference processes per device unless --workers-per-device says otherwise. On the CPU one per core, at most
    4, each with its share of the other cores as torch threads (one at least): a batch's many small operators scale
    poorly across threads, and processes do not wait for each other (benchmarks/README.md has the measurements). On
    a GPU one."""
    return 1 if device.type == "cuda" else min(4, cpu_cores())


def build_server(opts: ServeOptions) -> GanServer:
    models = named_models(opts.models)
    backend = resolve_backend(opts.backend)
    try:
        device = resolve_device(opts.device)
    except UsageError as e:
        raise ServeError(str(e)) from None
    if opts.host not in HOSTS:
        raise ServeError(f"host must be one of {', '.join(HOSTS)}, got {opts.host!r}")
    if not 0 < opts.batch_timeout_ms / 1000 < opts.timeout_s and opts.batch_timeout_ms != 0:
        raise ServeError(f"--batch-timeout-ms must be shorter than --timeout-s ({opts.timeout_s:g} s)")
    if not 1024 <= opts.port <= 65535:
        raise ServeError(f"--port must be in 1024-65535, got {opts.port}")
    configs = {name: load_config(d) for name, d in models.items()}
    summary = ", ".join(f"{n} ({c.arch} {c.resolution}x{c.resolution})" for n, c in configs.items())
    summary += f" on {device.type}"
    state_dir = Path(tempfile.mkdtemp(prefix="ganserve-serve-"))
    workers = opts.workers_per_device or default_workers(device)
    cpu_threads = opts.cpu_threads or cpu_threads_per_worker(workers)
    api = GeneratorAPI(
        models, backend, state_dir, cpu_threads, precision=opts.precision, max_batch_size=opts.max_batch_size,
        batch_timeout=opts.batch_timeout_ms / 1000,
    )
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    devices = [device.index] if device.index is not None else opts.devices
    server = GanServer(
        api, opts=opts, state_dir=state_dir, accelerator=accelerator, devices=devices,
        workers_per_device=workers, timeout=opts.timeout_s, summary=summary,
    )
    metrics = Metrics()
    api.num_workers = len(server.devices) * workers
    dispatcher = Dispatcher(server, api.api_path, opts.max_queue, metrics, depth=api.demand)
    metrics.track_queue_depth(lambda: dispatcher.depth)
    svc = Service(
        configs=configs, default_model=next(iter(models)), backend=backend,
        dispatcher=dispatcher, encoder=Encoder(opts.encode_threads), metrics=metrics, max_seeds=opts.max_seeds,
        window=2 * opts.max_batch_size * api.num_workers, server=server,
    )
    install(server.app, svc, opts.api_key, opts.max_body_bytes)
    return server


def _sigterm_handler(main_pid: int):
    """SIGTERM in the main process acts as Ctrl-C, on which LitServe drains and stops its processes. The processes
    it forks inherit this handler: they ignore a SIGTERM sent to the whole group (the main process stops them in
    order) unless the main process is gone."""

    def handler(signum, frame):
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        if os.getppid() != main_pid:
            os._exit(0)

    return handler


def serve(opts: ServeOptions) -> None:
    """Run until SIGTERM or Ctrl-C; then drain in-flight requests (up to DRAIN_SECONDS) and stop every process."""
    server = build_server(opts)
    previous = signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
    try:
        server.run(
            host=opts.host, port=opts.port, num_api_servers=1, log_level=opts.log_level,
            generate_client_file=False, api_server_worker_type="process",
        )
    except KeyboardInterrupt:
        pass  # during start-up: verify_worker_status has stopped the workers already
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(server.state_dir, ignore_errors=True)
    if "died" in server.stop_reason:  # LitServe's worker monitor stopped us
        raise ServeError("stopped: an inference worker died unexpectedly (see the log above)")
