"""Inference backends behind one interface: a backend turns a BatchInputs into uint8 images on its device.

Owns the Backend base class, the registry of backend names, load_backend() with the `auto` rule, and the eager
torch backend; the others live beside it (compiled.py, ort_backend.py, trt_backend.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ganserve.devices import resolve_device
from ganserve.imaging import to_uint8
from ganserve.models.config import ModelConfig
from ganserve.models.sampling import (
    BatchInputs,
    SampleSpec,
    batch_noise,
    batch_styles,
    iter_batches,
    prepare_batch,
    run_eager,
    synthesis_args,
)
from ganserve.models.weights import load_config, load_model, resolve_model


class BackendUnavailable(RuntimeError, ValueError):
    """This backend cannot run on this machine; the message says why in one line.

    Also a ValueError, so that the CLI reports it like any other bad choice: one line, exit status 2.
    """


class Backend:
    """Subclasses implement `run`. Everything above the network (seeds, truncation, mixing) is shared."""

    name = "base"

    def __init__(self, model_dir: Path, device: torch.device):
        self.model_dir = Path(model_dir)
        self.device = device
        self.config: ModelConfig = load_config(model_dir)
        self.max_batch_size: int | None = None  # larger requests are split, never refused
        self.noise_resolutions: list[int] = []
        self.auto_skipped: list[str] = []  # with backend="auto": "name: reason" of each faster one that could not run

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        """One batch (at most max_batch_size rows) -> [N, H, W, C] uint8 on self.device."""
        raise NotImplementedError

    def generate(self, specs: Sequence[SampleSpec], batch_size: int | None = None) -> np.ndarray:
        """Images for `specs` as a host [N, H, W, C] uint8 array, in batches no larger than the backend allows."""
        size = min(x for x in (batch_size, self.max_batch_size, len(specs) or 1) if x)
        parts = [self.run(self.prepare(batch)).cpu().numpy() for batch in iter_batches(specs, size)]
        if not parts:
            r, c = self.config.resolution, self.config.img_channels
            return np.zeros((0, r, r, c), np.uint8)
        return np.concatenate(parts)

    def prepare(self, specs: Sequence[SampleSpec]) -> BatchInputs:
        return prepare_batch(specs, self.config, self.noise_resolutions)

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """Eager PyTorch under inference_mode; batch-invariant on CPU (see run_eager).

    On CUDA the synthesis network runs channels-last under autocast, fp16 by default (precision="fp32" or "bf16"
    to change it); mapping, truncation and mixing stay float32.
    """

    name = "torch"

    def __init__(self, model_dir: Path, device: torch.device, precision: str | None = None):
        super().__init__(model_dir, device)
        precision = precision or ("fp16" if device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and device.type != "cuda":
            raise BackendUnavailable(f"{precision} inference needs a CUDA device; on {device} use fp32")
        self.precision = precision
        self.G = load_model(model_dir, device)
        if device.type == "cuda":
            self.G = self.G.to(memory_format=torch.channels_last)
        self.noise_resolutions = self.G.noise_resolutions()

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        if self.device.type == "cpu":
            return run_eager(self.G, inputs, self.device)
        with torch.inference_mode():
            ws = batch_styles(self.G.mapping, self.G.w_avg, inputs, self.device)
            noise = batch_noise(inputs, self.G.const_noise(), self.device)
            dtype = PRECISIONS[self.precision]
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                return to_uint8(self.G.synthesis(ws, noise, **synthesis_args(inputs, self.device)))

    def describe(self) -> str:
        return f"{self.name} ({self.precision}) on {self.device}"


# Imported here, after Backend, because each of them subclasses it; none imports its runtime until used.
from ganserve.export.artifacts import ExportError  # noqa: E402
from ganserve.export.compiled import CompileBackend  # noqa: E402
from ganserve.export.ort_backend import OnnxRuntimeBackend  # noqa: E402
from ganserve.export.trt_backend import TensorRTBackend  # noqa: E402

BACKENDS: dict[str, type[Backend]] = {
    "torch": TorchBackend,
    "compile": CompileBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "tensorrt": TensorRTBackend,
}
BACKEND_CHOICES = ("auto", *BACKENDS)
# `auto`: the first of these that is ready, fastest first (benchmarks/results). Ready means its artifact exists:
# auto never builds one (an ONNX export or TensorRT engine takes seconds to minutes and writes next to the model;
# `ganserve export` does that, or naming the backend explicitly). torch.compile is left out: it compiles for
# about half a minute at every start.
AUTO_ORDER = {"cuda": ("tensorrt", "onnxruntime", "torch"), "cpu": ("onnxruntime", "torch")}
_BUILDS = ("onnxruntime", "tensorrt")


def load_backend(model: str | Path, backend: str = "torch", device: str = "auto", **options) -> Backend:
    """The named backend for a model directory (or bundled model name, or export folder) on a device.

    device 'auto': CUDA if present. backend 'auto': the first backend of AUTO_ORDER that is ready here; each one
    that is not is skipped (its reason is kept in `auto_skipped`). Raises BackendUnavailable with a one-line reason.
    An explicitly named onnxruntime/tensorrt backend exports its artifact next to the model when it is missing.
    """
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    dev = resolve_device(device)
    path = _resolve(model)
    if backend != "auto":
        return BACKENDS[backend](path, dev, **options)
    skipped: list[str] = []
    for name in AUTO_ORDER["cuda" if dev.type == "cuda" else "cpu"]:
        try:
            chosen = BACKENDS[name](path, dev, **({"build": False} if name in _BUILDS else {}))
        except (BackendUnavailable, ExportError) as e:
            skipped.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        chosen.auto_skipped = skipped
        return chosen
    raise BackendUnavailable("no backend can run here: " + "; ".join(skipped))


def _resolve(model: str | Path) -> Path:
    """A model directory, a bundled model's directory, or an export folder (holding manifest.json) as it is."""
    from ganserve.export.artifacts import is_export_dir

    if is_export_dir(model):
        return Path(model)
    return resolve_model(model)
