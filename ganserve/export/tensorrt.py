"""TensorRT engines built with torch-tensorrt (the `tensorrt` extra): the dynamic batch profile, fp16 synthesis and
the per-GPU/TensorRT-version engine folder MODEL_DIR/tensorrt/KEY. ganserve.inference.tensorrt runs them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ganserve.errors import BackendUnavailable
from ganserve.export.artifacts import (
    base_manifest,
    copy_config,
    default_export_dir,
    save_extras,
    write_manifest,
)
from ganserve.export.onnx_export import (
    DEFAULT_MAX_BATCH,
    MappingGraph,
    SynthesisGraph,
    example_classes,
    synthesis_graph,
)
from ganserve.files import staged_dir
from ganserve.models.weights import load_model

MAPPING_ENGINE, SYNTHESIS_ENGINE = "mapping.engine", "synthesis.engine"
OPT_BATCH = 8  # the batch size the profile is tuned for


def require_tensorrt(device: torch.device):
    """(torch_tensorrt, tensorrt) modules, or BackendUnavailable saying in one line what is missing."""
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT needs a CUDA GPU; the device is {device}")
    try:
        import tensorrt as trt
        import torch_tensorrt
    except ImportError as e:
        missing = f"torch-tensorrt is not installed ({e.name} missing): pip install 'ganserve[tensorrt]'"
        raise BackendUnavailable(missing) from None
    return torch_tensorrt, trt


def engine_key(device: torch.device, trt_version: str, precision: str, max_batch: int) -> str:
    """The cache folder name: an engine only runs on the GPU model and TensorRT version that built it."""
    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{name}-sm{major}{minor}-trt{trt_version}-{precision}-b{max_batch}"


class _NoiseSplit(torch.nn.Module):
    """Synthesis with all noise maps packed in one [N, sum(r*r)] input (one dynamic input instead of num_ws)."""

    def __init__(self, synthesis: SynthesisGraph, resolutions: list[int]):
        super().__init__()
        self.synthesis, self.resolutions = synthesis, resolutions

    def forward(self, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        maps, start = [], 0
        for r in self.resolutions:
            maps.append(noise[:, start:start + r * r].reshape(-1, 1, r, r))
            start += r * r
        return self.synthesis(ws, tuple(maps))


def pack_noise(noise: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([n.flatten(1) for n in noise], dim=1)


def export_program(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], max_batch: int):
    """torch.export of a graph module with every input's first axis a dynamic batch in 1..max_batch."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(module.eval(), examples, dynamic_shapes=tuple({0: batch} for _ in examples),
                               strict=False)


def synthesis_module(G, fp16: bool) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The synthesis network as TensorRT sees it (noise packed in one input, or StyleGAN3's transform input; float
    output) and example inputs."""
    synthesis = synthesis_graph(G, "float", torch.float16 if fp16 else torch.float32)
    device = G.w_avg.device
    ws = torch.zeros(2, G.config.num_ws, G.config.w_dim, device=device)
    if G.config.arch == "stylegan3":
        return synthesis, (ws, torch.eye(3, device=device).expand(2, 3, 3).contiguous())
    resolutions = G.noise_resolutions()
    if not resolutions:
        return synthesis, (ws,)
    return _NoiseSplit(synthesis, resolutions), (ws, pack_noise([n.expand(2, -1, -1, -1) for n in G.const_noise()]))


def _build_engine(torch_tensorrt, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], max_batch: int,
                  fp16: bool, device: torch.device) -> bytes:
    program = export_program(module, examples, max_batch)
    inputs = [
        torch_tensorrt.Input(min_shape=(1, *t.shape[1:]), opt_shape=(min(OPT_BATCH, max_batch), *t.shape[1:]),
                             max_shape=(max_batch, *t.shape[1:]), dtype=t.dtype)
        for t in examples
    ]
    convert = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine
    params = inspect.signature(convert).parameters
    options: dict = {k: v for k, v in (("min_block_size", 1), ("device", device)) if k in params}
    if "use_explicit_typing" in params:  # newer releases: the module's own dtypes (fp16 weights) decide
        options["use_explicit_typing"] = True
    else:
        options["enabled_precisions"] = {torch.float16, torch.float32} if fp16 else {torch.float32}
    engine = convert(program, inputs, **options)
    return bytes(engine)


def export_tensorrt(
    model_dir: str | Path,
    out: str | Path | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    fp16: bool = True,
    device: str | torch.device = "cuda",
    progress: Callable[[str], None] = print,
) -> Path:
    """Build TensorRT engines for a model directory (mapping fp32, synthesis fp16 or fp32, batch 1..max_batch)."""
    device = torch.device(device)
    torch_tensorrt, trt = require_tensorrt(device)
    model_dir = Path(model_dir)
    precision = "fp16" if fp16 else "fp32"
    out = Path(out) if out else default_export_dir(model_dir, "tensorrt",
                                                   key=engine_key(device, trt.__version__, precision, max_batch))
    progress(f"[1/4] loading {model_dir} on {device}")
    G = load_model(model_dir, device)
    S = load_model(model_dir, device).half() if fp16 else G
    resolutions = G.noise_resolutions()
    z = torch.randn(2, G.config.z_dim, device=device)
    c = example_classes(2, G.config.c_dim)  # a class-conditional mapping takes (z, c), as in the ONNX export
    mapping_inputs = (z,) if c is None else (z, c.to(device))
    with staged_dir(out) as tmp:
        progress(f"[2/4] building {MAPPING_ENGINE} (fp32, batch 1..{max_batch})")
        (tmp / MAPPING_ENGINE).write_bytes(_build_engine(torch_tensorrt, MappingGraph(G), mapping_inputs, max_batch,
                                                         False, device))
        progress(f"[3/4] building {SYNTHESIS_ENGINE} ({precision}, batch 1..{max_batch}, profile opt {OPT_BATCH})")
        module, examples = synthesis_module(S, fp16)
        examples = tuple(t.float() for t in examples)  # the engine's inputs stay float32 (cast inside)
        (tmp / SYNTHESIS_ENGINE).write_bytes(_build_engine(torch_tensorrt, module, examples, max_batch, fp16,
                                                           device))
        save_extras(tmp, G.w_avg, G.const_noise())
        copy_config(model_dir, tmp)
        write_manifest(tmp, base_manifest(
            model_dir, "tensorrt", precision=precision, max_batch=max_batch, batch_range=[1, max_batch],
            opt_batch=min(OPT_BATCH, max_batch), gpu=torch.cuda.get_device_name(device),
            compute_capability=list(torch.cuda.get_device_capability(device)), tensorrt_version=trt.__version__,
            engines={"mapping": MAPPING_ENGINE, "synthesis": SYNTHESIS_ENGINE},
            inputs={"mapping": ["z [batch, z_dim] float32"]
                    + ([f"c [batch, {G.config.c_dim}] float32 (one-hot class)"] if c is not None else []),
                    "synthesis": ["ws [batch, num_ws, w_dim] float32"]
                    + (["noise [batch, sum(r*r)] float32 (per-layer maps, flattened)"] if resolutions else [])
                    + (["transform [batch, 3, 3] float32 (input transform)"] if G.config.arch == "stylegan3" else [])},
            outputs={"mapping": ["ws [batch, num_ws, w_dim] float32"],
                     "synthesis": ["images [batch, C, H, W] float32"]},
            noise_resolutions=resolutions,
        ))
        progress(f"[4/4] wrote {out}")
    return out
