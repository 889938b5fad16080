"""The compile backend: the synthesis network under torch.compile, with CUDA graphs over fixed batch buckets on CUDA.

Owns the bucket rule (batches padded up to a power of two on CUDA; one dynamic-batch graph on CPU) and padding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ganserve.errors import BackendUnavailable
from ganserve.imaging import to_uint8
from ganserve.inference.sampling import BatchInputs, batch_noise, batch_styles, batch_transform
from ganserve.inference.torch_backend import TorchBackend

BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def bucket_for(n: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket holding n rows."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"batch of {n} is above the largest bucket {buckets[-1]}")


def pad_rows(inputs: BatchInputs, size: int) -> BatchInputs:
    """`inputs` with its last row repeated up to `size` rows (rows are independent: padding changes no image)."""
    extra = size - len(inputs)
    if extra <= 0:
        return inputs

    def pad(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])

    noise = None if inputs.noise is None else [pad(n) for n in inputs.noise]
    arrays = {f.name: pad(getattr(inputs, f.name)) for f in dataclasses.fields(inputs) if f.name != "noise"}
    return BatchInputs(noise=noise, **arrays)


class CompileBackend(TorchBackend):
    """torch.compile of synthesis + uint8 conversion; mapping, truncation and mixing run eagerly (they are tiny).

    CPU: one graph with a dynamic batch axis (compiled on first use, about half a minute); a batch of one runs as
    two rows (a graph specialised for one row would be compiled again). CUDA: mode "reduce-overhead" (CUDA graphs)
    over the fixed BUCKETS, each batch padded up to its bucket, so at most len(BUCKETS) graphs are captured.
    """

    name = "compile"

    def __init__(self, model_dir: Path, device: torch.device, precision: str | None = None, mode: str | None = None):
        if not hasattr(torch, "compile"):
            raise BackendUnavailable(f"torch {torch.__version__} has no torch.compile")
        super().__init__(model_dir, device, precision)
        self.mode = mode or ("reduce-overhead" if device.type == "cuda" else "default")
        self.max_batch_size = BUCKETS[-1]
        self._compiled = torch.compile(self._synthesize, mode=self.mode, dynamic=False, fullgraph=True)

    def _synthesize(self, ws: torch.Tensor, noise: list[torch.Tensor], transform: torch.Tensor | None) -> torch.Tensor:
        extra = {} if transform is None else {"transform": transform}
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float16, enabled=self.autocast is not None):
            return to_uint8(self.G.synthesis(ws, noise or None, **extra))

    @torch.inference_mode()
    def run(self, inputs: BatchInputs) -> torch.Tensor:
        n = len(inputs)
        size = bucket_for(n) if self.device.type == "cuda" else max(n, 2)
        padded = pad_rows(inputs, size)
        ws = batch_styles(self.G.mapping, self.G.w_avg, padded, self.device)
        noise = batch_noise(padded, self.G.const_noise(), self.device)
        if noise is None:  # always pass noise explicitly: one graph serves const and random noise
            noise = [c.expand(size, -1, -1, -1).contiguous() for c in self.G.const_noise()]
        # StyleGAN3: always a transform (identity rows when none is asked for), for the same reason
        transform = batch_transform(padded, self.device, explicit=True) if self.config.arch == "stylegan3" else None
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        else:
            for t in (ws, *noise, *([] if transform is None else [transform])):
                torch._dynamo.mark_dynamic(t, 0)
        images = self._compiled(ws, noise, transform)
        return images[:n].clone()  # CUDA graphs reuse their output memory on the next call

    def describe(self) -> str:
        return f"{self.name} ({self.mode}, {self.describe_precision()}) on {self.device}"
