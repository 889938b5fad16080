"""The inference backend interface: a backend turns a BatchInputs into uint8 images on its device.

Everything above the network (seeds, truncation, mixing) is shared here; each backend implements `run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ganserve.devices import Device
from ganserve.inference.sampling import BatchInputs, SampleSpec, iter_batches, prepare_batch
from ganserve.models.config import ModelConfig
from ganserve.models.weights import load_config

if TYPE_CHECKING:
    import torch


class Backend:
    """Subclasses implement `run`. Everything above the network (seeds, truncation, mixing) is shared."""

    name = "base"

    def __init__(self, model_dir: Path, device: Device | torch.device | str):
        self.model_dir = Path(model_dir)
        self.device = Device(device)
        self.config: ModelConfig = load_config(model_dir)
        self.max_batch_size: int | None = None  # larger requests are split, never refused
        self.noise_resolutions: list[int] = []
        self.auto_skipped: list[str] = []  # with backend="auto": "name: reason" of each faster one that could not run

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        """One batch (at most max_batch_size rows) -> [N, H, W, C] uint8 on self.device."""
        raise NotImplementedError

    def styles(self, inputs: BatchInputs) -> torch.Tensor:
        """The ws [N, num_ws, w_dim] that `run` hands the synthesis network for the same batch (mapping,
        truncation and mixing on this backend), on self.device."""
        raise NotImplementedError

    def run_host(self, inputs: BatchInputs) -> np.ndarray:
        """`run` as a host [N, H, W, C] uint8 array (a backend that computes on the host may skip torch)."""
        return self.run(inputs).cpu().numpy()

    def styles_host(self, inputs: BatchInputs) -> np.ndarray:
        """`styles` as a host [N, num_ws, w_dim] float32 array."""
        return self.styles(inputs).float().cpu().numpy()

    def latents(self, specs: Sequence[SampleSpec]) -> np.ndarray:
        """The ws of `specs` as a host [N, num_ws, w_dim] float32 array: given back as `w`, each makes the same
        image as its spec."""
        size = self.max_batch_size or len(specs) or 1
        c = self.config
        parts = [self.styles_host(self.prepare(batch)) for batch in iter_batches(specs, size)]
        return np.concatenate(parts) if parts else np.zeros((0, c.num_ws, c.w_dim), np.float32)

    def generate(self, specs: Sequence[SampleSpec], batch_size: int | None = None) -> np.ndarray:
        """Images for `specs` as a host [N, H, W, C] uint8 array, in batches no larger than the backend allows."""
        size = min(x for x in (batch_size, self.max_batch_size, len(specs) or 1) if x)
        parts = [self.run_host(self.prepare(batch)) for batch in iter_batches(specs, size)]
        if not parts:
            r, c = self.config.resolution, self.config.img_channels
            return np.zeros((0, r, r, c), np.uint8)
        return np.concatenate(parts)

    def prepare(self, specs: Sequence[SampleSpec]) -> BatchInputs:
        return prepare_batch(specs, self.config, self.noise_resolutions)

    def describe(self) -> str:
        return f"{self.name} on {self.device}"
