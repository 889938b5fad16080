"""The worker: each inference process loads every served model once, then turns batches of image jobs into pixels.

Owns worker setup (backends, the report to the main process) only. litserve_glue runs the worker in its processes
and feeds it; validation, batching policy and encoding live in their own modules.
"""

from __future__ import annotations

import json
from pathlib import Path

from ganserve.files import atomic_write_text
from ganserve.serve.batching import ImageJob, ImageResult, run_jobs


class GeneratorWorker:
    """Pickled into each inference process (litserve_glue.Worker): `setup` there, then `predict` per batch."""

    def __init__(self, models: dict[str, Path], backend: str, state_dir: Path, cpu_threads: int | None = None,
                 precision: str | None = None):
        self.model_dirs = models
        self.backend_name = backend
        self.state_dir = state_dir  # where workers report to the main process: the backends chosen, or why none loaded
        self.cpu_threads = cpu_threads  # torch intra-op threads when the device is the CPU
        self.precision = precision  # of the torch/compile backends on CUDA (None: their default)

    def setup(self, device: str) -> None:
        from ganserve.devices import set_torch_threads, setup_cpu_inference
        from ganserve.inference.registry import TORCH_BACKENDS, load_backend

        on_cpu = str(device).startswith("cpu")
        if on_cpu:
            setup_cpu_inference()
        try:
            self.backends = {name: load_backend(d, self.backend_name, device, precision=self.precision)
                             for name, d in self.model_dirs.items()}
        except Exception as e:
            atomic_write_text(Path(self.state_dir) / "error.txt", f"{type(e).__name__}: {e}".splitlines()[0])
            raise
        if on_cpu and any(b.name in TORCH_BACKENDS for b in self.backends.values()):
            set_torch_threads(self.cpu_threads)  # ONNX Runtime's sessions set their own
        names = {n: b.name for n, b in self.backends.items()}
        atomic_write_text(Path(self.state_dir) / "backends.json", json.dumps(names))

    def predict(self, jobs: list[ImageJob]) -> list[ImageResult]:
        return run_jobs(self.backends, jobs)
