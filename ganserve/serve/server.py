"""Building and running the server: options, which models, the inference server with our routes, and its report.

Owns what `ganserve serve` starts: the options checked, the worker, the routes, the state directory the workers
report to, the start-up line and the errors in one line; the processes themselves are run by litserve_glue.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ganserve.devices import Device, cpu_cores, cpu_threads_per_worker, default_batch_size, resolve_device
from ganserve.errors import ServeError, UsageError
from ganserve.models.weights import bundled_models, load_config, resolve_model
from ganserve.serve.api import GeneratorWorker
from ganserve.serve.dispatch import Dispatcher
from ganserve.serve.encoding import Encoder
from ganserve.serve.litserve_glue import HOSTS, PORTS, InferenceServer, ServerSettings, WorkersFailed
from ganserve.serve.metrics import Metrics
from ganserve.serve.params import MODEL_NAME_PATTERN
from ganserve.serve.routes import Service, install

DRAIN_SECONDS = 7.0  # in-flight requests get this long after SIGTERM/Ctrl-C; the rest of shutdown takes well under 3 s


@dataclass
class ServeOptions:
    """`ganserve serve` flags, one field each."""

    models: list[str] = field(default_factory=list)  # model directories or bundled names, optionally NAME=DIR
    backend: str = "auto"
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int | None = None  # default: devices.default_batch_size(device)
    batch_timeout_ms: float = 5.0
    devices: int = 1
    workers_per_device: int | None = None  # default: 1 per GPU; on the CPU one per core (at most 4 for torch)
    max_queue: int = 512  # images queued or on the device before new requests get 503
    max_seeds: int = 1024  # seeds, latents or interpolation frames per request; more is a 413
    max_body_bytes: int = 8 << 20
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


@dataclass
class Server:
    """What build_server makes: the inference server with our routes installed, and what serve reports from."""

    inference: InferenceServer
    opts: ServeOptions
    state_dir: Path  # where the workers report: backends.json once loaded, error.txt if one could not load
    summary: str  # the models and the device, for the start-up line
    backend_names: dict[str, str]  # model -> backend the workers chose (filled in once they are ready)

    def on_ready(self) -> None:
        """Every worker has loaded: read the backends they chose (before the HTTP process starts: it inherits them)."""
        self.backend_names.update(json.loads((self.state_dir / "backends.json").read_text()))

    def on_serving(self) -> None:
        backends = ", ".join(sorted(set(self.backend_names.values())))
        print(f"ganserve: serving {self.summary} with {backends} at http://{self.opts.host}:{self.opts.port}",
              flush=True)


def default_workers(device: Device, backend: str = "auto") -> int:
    """Inference processes per device unless --workers-per-device says otherwise. On a GPU one. On the CPU one per
    core: ONNX Runtime (what `auto` runs there) uses one thread per session, so processes are how it uses the cores;
    eager torch at most 4, each with its share of the other cores as torch threads (one at least), since a batch's
    many small operators scale poorly across threads and processes do not wait for each other."""
    if device.type == "cuda":
        return 1
    return cpu_cores() if backend in ("auto", "onnxruntime") else min(4, cpu_cores())


def build_server(opts: ServeOptions) -> Server:
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
    if not PORTS[0] <= opts.port <= PORTS[1]:
        raise ServeError(f"--port must be in {PORTS[0]}-{PORTS[1]}, got {opts.port}")
    configs = {name: load_config(d) for name, d in models.items()}
    summary = ", ".join(f"{n} ({c.arch} {c.resolution}x{c.resolution})" for n, c in configs.items())
    summary += f" on {device.type}"
    state_dir = Path(tempfile.mkdtemp(prefix="ganserve-serve-"))
    workers = opts.workers_per_device or default_workers(device, backend)
    max_batch = opts.max_batch_size or default_batch_size(device)
    cpu_threads = opts.cpu_threads or cpu_threads_per_worker(workers)
    worker = GeneratorWorker(models, backend, state_dir, cpu_threads, precision=opts.precision)
    settings = ServerSettings(
        api_path="/generate", accelerator="cuda" if device.type == "cuda" else "cpu",
        devices=[device.index] if device.index is not None else opts.devices, workers_per_device=workers,
        max_batch_size=max_batch, batch_timeout=opts.batch_timeout_ms / 1000, timeout=opts.timeout_s,
        drain_seconds=DRAIN_SECONDS,
    )
    inference = InferenceServer(worker, settings)
    server = Server(inference, opts, state_dir, summary, backend_names={})
    metrics = Metrics()
    dispatcher = Dispatcher(inference, opts.max_queue, metrics)
    metrics.track_queue_depth(lambda: dispatcher.depth)
    svc = Service(
        configs=configs, default_model=next(iter(models)), backend=backend,
        dispatcher=dispatcher, encoder=Encoder(opts.encode_threads), metrics=metrics, max_seeds=opts.max_seeds,
        window=2 * max_batch * inference.num_workers, server=inference, backend_names=server.backend_names,
    )
    install(inference.app, svc, opts.api_key, opts.max_body_bytes)
    return server


def serve(opts: ServeOptions) -> None:
    """Run until SIGTERM or Ctrl-C; then drain in-flight requests (up to DRAIN_SECONDS) and stop every process."""
    if threading.current_thread() is threading.main_thread():
        # A process started in the background by a shell without job control (`ganserve serve &` in a script, CI
        # runners) inherits SIGINT ignored; SIGINT to the server (kill -INT, Ctrl-C to its group) must still stop it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    server = build_server(opts)
    try:
        server.inference.run(opts.host, opts.port, opts.log_level, on_ready=server.on_ready,
                             on_serving=server.on_serving)
    except WorkersFailed:
        error = server.state_dir / "error.txt"
        reason = error.read_text().strip() if error.exists() else ""
        raise ServeError(f"a worker could not load the models: {reason or 'see the log above'}") from None
    finally:
        shutil.rmtree(server.state_dir, ignore_errors=True)
    if server.inference.worker_died:
        raise ServeError("stopped: an inference worker died unexpectedly (see the log above)")
