"""Inference backends behind one interface: a backend turns a BatchInputs into uint8 images on its device.

Owns the Backend base class, the registry of backend names, and load_backend(); the eager torch backend lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ganserve.devices import resolve_device
from ganserve.models.config import ModelConfig
from ganserve.models.sampling import BatchInputs, SampleSpec, iter_batches, prepare_batch, run_eager
from ganserve.models.weights import load_config, load_model, resolve_model


class BackendUnavailable(RuntimeError):
    """This backend cannot run on this machine; the message says why in one line."""


class Backend:
    """Subclasses implement `run`. Everything above the network (seeds, truncation, mixing) is shared."""

    name = "base"

    def __init__(self, model_dir: Path, device: torch.device):
        self.model_dir = Path(model_dir)
        self.device = device
        self.config: ModelConfig = load_config(model_dir)
        self.max_batch_size: int | None = None  # larger requests are split, never refused
        self.noise_resolutions: list[int] = []

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


class TorchBackend(Backend):
    """Eager PyTorch under inference_mode; batch-invariant on CPU (see run_eager)."""

    name = "torch"

    def __init__(self, model_dir: Path, device: torch.device):
        super().__init__(model_dir, device)
        self.G = load_model(model_dir, device)
        self.noise_resolutions = self.G.noise_resolutions()

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        return run_eager(self.G, inputs, self.device)


BACKENDS: dict[str, type[Backend]] = {"torch": TorchBackend}


def load_backend(model: str | Path, backend: str = "torch", device: str = "auto") -> Backend:
    """The named backend for a model directory (or bundled model name) on a device ('auto': CUDA if present)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return BACKENDS[backend](resolve_model(model), resolve_device(device))
