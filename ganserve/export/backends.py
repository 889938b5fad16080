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

    On CUDA the synthesis network runs channels-last; mapping, truncation and mixing stay float32. ProGAN and StyleGAN
    run under autocast, fp16 by default (precision="fp32" or "bf16" to change it). StyleGAN2/3 (imported) run in
    float32 by default, as their weights were made; precision="fp16" (or "bf16") runs only the layers their source
    ran in float16 (NVlabs' num_fp16_res highest resolutions, with its conv_clamp) in that precision.
    """

    name = "torch"

    def __init__(self, model_dir: Path, device: torch.device, precision: str | None = None):
        super().__init__(model_dir, device)
        self.G = load_model(model_dir, device)
        layerwise = hasattr(self.G, "half_layers")  # StyleGAN2/3: reduced precision where the source used it
        precision = precision or ("fp16" if device.type == "cuda" and not layerwise else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and device.type != "cuda":
            raise BackendUnavailable(f"{precision} inference needs a CUDA device; on {device} use fp32")
        self.precision = precision
        self.autocast: torch.dtype | None = None if precision == "fp32" else PRECISIONS[precision]
        self.half_layers = 0
        if layerwise and self.autocast is not None:
            self.half_layers = len(self.G.set_half_layers(self.autocast))
            self.autocast = None
            if not self.half_layers:
                raise BackendUnavailable(f"{precision}: this {self.config.arch} model's source ran every layer in "
                                         "float32 (num_fp16_res 0), so it has no float16 layers; use fp32")
        if device.type == "cuda":
            self.G = self.G.to(memory_format=torch.channels_last)
        self.noise_resolutions = self.G.noise_resolutions()

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        if self.device.type == "cpu":
            return run_eager(self.G, inputs, self.device)
        with torch.inference_mode():
            ws = batch_styles(self.G.mapping, self.G.w_avg, inputs, self.device)
            noise = batch_noise(inputs, self.G.const_noise(), self.device)
            with torch.autocast("cuda", dtype=self.autocast or torch.float16, enabled=self.autocast is not None):
                return to_uint8(self.G.synthesis(ws, noise, **synthesis_args(inputs, self.device)))

    def describe_precision(self) -> str:
        if self.half_layers:
            return f"{self.precision} in the source's {self.half_layers} float16 layers, fp32 elsewhere"
        return self.precision

    def describe(self) -> str:
        return f"{self.name} ({self.describe_precision()}) on {self.device}"


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
    options = {k: v for k, v in options.items() if v is not None}
    if "precision" in options:  # a choice of the PyTorch backends: with auto, it means torch
        backend = "torch" if backend == "auto" else backend
        if backend not in ("torch", "compile", "tensorrt"):
            raise ValueError(f"precision is an option of the torch, compile and tensorrt backends; {backend} runs "
                             "the precision of its export (ganserve export --fp16)")
        if backend == "tensorrt" and options["precision"] not in ("fp16", "fp32"):
            raise ValueError(f"TensorRT engines are built in fp16 or fp32, not {options['precision']}")
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
