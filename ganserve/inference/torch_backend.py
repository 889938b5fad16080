"""The eager PyTorch backend (`torch`): the model directory's generator under inference_mode."""

from __future__ import annotations

from pathlib import Path

import torch

from ganserve.errors import BackendUnavailable, UsageError
from ganserve.imaging import to_uint8
from ganserve.inference.backend import Backend
from ganserve.inference.sampling import BatchInputs, batch_noise, batch_styles, run_eager, synthesis_args
from ganserve.models.weights import load_model

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """Eager PyTorch under inference_mode; batch-invariant on CPU (see run_eager).

    On the CPU precision="bf16" (opt-in) runs the synthesis network under bfloat16 autocast: faster where the CPU
    has bfloat16 instructions, but its pixels differ from float32's and depend on the batch (the same-pixels promise
    holds for fp32 only). On CUDA the synthesis network runs channels-last; mapping, truncation and mixing stay
    float32. ProGAN and StyleGAN run under autocast, fp16 by default (precision="fp32" or "bf16" to change it).
    StyleGAN2/3 (imported) run in float32 by default, as their weights were made; precision="fp16" (or "bf16")
    runs only the layers their source ran in float16 (NVlabs' num_fp16_res highest resolutions, with its
    conv_clamp) in that precision.
    """

    name = "torch"

    def __init__(self, model_dir: Path, device: torch.device, precision: str | None = None):
        super().__init__(model_dir, device)
        self.G = load_model(model_dir, device)
        layerwise = hasattr(self.G, "half_layers")  # StyleGAN2/3: reduced precision where the source used it
        precision = precision or ("fp16" if device.type == "cuda" and not layerwise else "fp32")
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise BackendUnavailable(f"fp16 inference needs a CUDA device; on {device} use fp32 (or bf16)")
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

    @torch.inference_mode()
    def styles(self, inputs: BatchInputs) -> torch.Tensor:
        return batch_styles(self.G.mapping, self.G.w_avg, inputs, self.device)

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        if self.device.type == "cpu" and self.autocast is None and not self.half_layers:
            return run_eager(self.G, inputs, self.device)
        with torch.inference_mode():
            ws = batch_styles(self.G.mapping, self.G.w_avg, inputs, self.device)
            noise = batch_noise(inputs, self.G.const_noise(), self.device)
            dtype = self.autocast or torch.float16
            with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast is not None):
                return to_uint8(self.G.synthesis(ws, noise, **synthesis_args(inputs, self.device)).float())

    def describe_precision(self) -> str:
        if self.half_layers:
            return f"{self.precision} in the source's {self.half_layers} float16 layers, fp32 elsewhere"
        return self.precision

    def describe(self) -> str:
        return f"{self.name} ({self.describe_precision()}) on {self.device}"
