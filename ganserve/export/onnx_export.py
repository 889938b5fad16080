"""ONNX export of a model directory: a mapping graph (z [, c] -> ws) and a synthesis graph (ws, noise or StyleGAN3's
input transform -> uint8 NHWC).

Owns the graph wrappers, the dynamo export with a dynamic batch axis, the graph checks (onnx.checker, no Random*
ops, agreement with eager PyTorch) and the manifest. Truncation and mixing happen between the two graphs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganserve.errors import ExportError, UsageError
from ganserve.export.artifacts import (
    DEFAULT_MAX_BATCH,
    DEFAULT_OPSET,
    EXPORTER_VERSION,
    MAPPING_FILE,
    OUTPUTS,
    SYNTHESIS_FILE,
    TRANSFORM_INPUT,
    base_manifest,
    copy_config,
    default_export_dir,
    save_extras,
    write_manifest,
)
from ganserve.files import staged_dir
from ganserve.imaging import to_uint8
from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.latents import image_transform
from ganserve.models.weights import load_model


class MappingGraph(nn.Module):
    """z [N, z_dim] (+ one-hot class c [N, c_dim] for class-conditional models) -> ws [N, num_ws, w_dim] (always
    float32: truncation needs the precise w)."""

    def __init__(self, G: ProgressiveGenerator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.G.mapping(z) if c is None else self.G.mapping(z, c)


def example_classes(n: int, c_dim: int) -> torch.Tensor | None:
    """One-hot labels [n, c_dim] (classes 0, 1, ... in turn) to trace a conditional mapping with; None if c_dim is 0."""
    if not c_dim:
        return None
    return torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float()


class SynthesisGraph(nn.Module):
    """ws [N, num_ws, w_dim] (+ one noise map [N, 1, r, r] per StyleGAN layer) -> images.

    Output "uint8": [N, H, W, C] through ganserve.imaging.to_uint8 (the one conversion rule); "float": [N, C, H, W]
    float32 as the network gives it (used to check precision). Inputs stay float32 when the weights are fp16.
    """

    def __init__(self, G: ProgressiveGenerator, output: str = "uint8", dtype: torch.dtype = torch.float32):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.G, self.output, self.dtype = G, output, dtype

    def forward(self, ws: torch.Tensor, noise: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        ws = ws.to(self.dtype)
        return self.convert(self.G.synthesis(ws, [n.to(self.dtype) for n in noise] if noise else None))

    def convert(self, img: torch.Tensor) -> torch.Tensor:
        return to_uint8(img) if self.output == "uint8" else img.float()


class TransformedSynthesisGraph(SynthesisGraph):
    """StyleGAN3: ws [N, num_ws, w_dim] and the input transform [N, 3, 3] of each image (identity rows for none;
    ganserve.models.stylegan3.image_transform) -> images. StyleGAN3 has no noise inputs."""

    def forward(self, ws: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
        return self.convert(self.G.synthesis(ws.to(self.dtype), transform=transform))


def synthesis_graph(G, output: str = "uint8", dtype: torch.dtype = torch.float32) -> SynthesisGraph:
    """The synthesis graph module of a generator: with a transform input for StyleGAN3."""
    cls = TransformedSynthesisGraph if G.config.arch == "stylegan3" else SynthesisGraph
    return cls(G, output, dtype)


def _quiet_export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic_shapes: tuple, opset: int) -> None:
    """torch.onnx.export (dynamo) with its console chatter and warnings captured; the message of a failure is
    kept."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notices, not the user's business
            torch.onnx.export(
                module, args, str(path), dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
                # onnxscript's optimizer drops `+ 1e-8` (the eps of pixel_norm and AdaIN) as if it were + 0, which
                # turns flat feature maps into NaN; ONNX Runtime optimises the graph itself when it loads it.
                optimize=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export of {path.name} failed: {str(e).strip().splitlines()[0]}") from e
    finally:
        log.setLevel(level)


# Ops that pass a constant zero through unchanged in value (shape and type aside).
_ZERO_PRESERVING = ("Cast", "CastLike", "Expand", "Identity", "Reshape", "Unsqueeze", "Squeeze")


def drop_zero_conv_bias(path: Path) -> int:
    """Remove every Conv/ConvTranspose bias that is a constant zero, and the nodes left computing it; returns how
    many. The exporter gives a convolution without bias a computed zero bias (Expand of a Cast of 0), which ONNX
    Runtime does not fold: its CPU provider then keeps the convolution in NCHW instead of its blocked NCHWc kernels,
    its synthesis graph 1.12-1.17x slower for the bundled StyleGAN (benchmarks/README.md, Roofline). Adding zero
    changes no value."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}

    def is_zero(name: str) -> bool:
        if name in initializers:
            return not numpy_helper.to_array(initializers[name]).any()
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type == "Constant":
            attr = node.attribute[0] if len(node.attribute) == 1 else None
            if attr is None or attr.name not in ("value", "value_float", "value_floats"):
                return False
            value = numpy_helper.to_array(attr.t) if attr.name == "value" else np.asarray(
                attr.f if attr.name == "value_float" else list(attr.floats))
            return not np.asarray(value).any()
        return node.op_type in _ZERO_PRESERVING and is_zero(node.input[0])

    def kernel_area(node) -> int:
        shape = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
        return int(np.prod(shape)) if shape else 0

    dropped = 0
    for node in graph.node:
        # 1x1 ones are left alone: ProGAN's pixel norm sums channels with one (a single output channel), which runs
        # faster in NCHW than between the reorders NCHWc would put around it (0.95x for progan-emoji64).
        if node.op_type in ("Conv", "ConvTranspose") and node.domain in ("", "ai.onnx") and len(node.input) == 3 \
                and node.input[2] and kernel_area(node) > 1 and is_zero(node.input[2]):
            del node.input[2]
            dropped += 1
    if dropped:
        # Prune what only fed the dropped biases (nodes whose outputs nothing reads any more).
        outputs = {o.name for o in graph.output}
        while True:
            used = {i for node in graph.node for i in node.input} | outputs
            dead = [node for node in graph.node if not any(o in used for o in node.output)]
            if not dead:
                break
            for node in dead:
                graph.node.remove(node)
        used = {i for node in graph.node for i in node.input}
        for t in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(t)
        onnx.save(model, str(path))
    return dropped


def _io_description(path: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def check_graph(path: str | Path) -> list[str]:
    """onnx.checker on the file, and no Random* op anywhere (noise is an input); returns the graph's op types."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{Path(path).name} fails onnx.checker: {str(e).splitlines()[0]}") from None
    ops = sorted({n.op_type for n in model.graph.node} | {
        n.op_type for f in model.functions for n in f.node})
    random_ops = [op for op in ops if op.startswith("Random") or op in ("Bernoulli", "Multinomial")]
    if random_ops:
        raise ExportError(f"{Path(path).name} holds random ops {random_ops}; noise must be a graph input")
    return ops


def export_onnx(
    model_dir: str | Path,
    out: str | Path | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    output: str = "uint8",
    progress: Callable[[str], None] = print,
) -> Path:
    """Export a model directory to ONNX (mapping + synthesis graphs, dynamic batch 1..max_batch); returns the folder.

    fp16 keeps the mapping graph in float32 and runs the synthesis weights in float16 (for GPU providers).
    """
    if max_batch < 1:
        raise UsageError(f"max batch must be at least 1, got {max_batch}")
    model_dir = Path(model_dir)
    out = Path(out) if out else default_export_dir(model_dir, "onnx", fp16)
    progress(f"[1/5] loading {model_dir}")
    G = load_model(model_dir, "cpu")
    config = G.config
    n = 2  # example batch; the batch axis is exported as a symbolic dimension
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    z = torch.randn(n, config.z_dim, generator=torch.Generator().manual_seed(0))
    c = example_classes(n, config.c_dim)
    mapping_args, mapping_names = ((z,), ["z"]) if c is None else ((z, c), ["z", "c"])
    with staged_dir(out) as tmp:
        progress(f"[2/5] exporting {MAPPING_FILE} (opset {opset}, batch 1..{max_batch}"
                 + (f", class input c [batch, {config.c_dim}])" if c is not None else ")"))
        _quiet_export(MappingGraph(G).eval(), mapping_args, tmp / MAPPING_FILE, mapping_names, ["ws"],
                      tuple({0: batch} for _ in mapping_args), opset)
        with torch.no_grad():
            ws = G.mapping(*mapping_args)
        noise = tuple(n.expand(len(z), -1, -1, -1).contiguous() for n in G.const_noise())
        noise_names = [f"noise{i}" for i in range(len(noise))]
        dtype = torch.float16 if fp16 else torch.float32
        S = G if not fp16 else load_model(model_dir, "cpu").half()
        args: tuple = (ws, noise) if noise else (ws,)
        shapes: tuple = ({0: batch}, tuple({0: batch} for _ in noise)) if noise else ({0: batch},)
        extra_inputs = []
        if config.arch == "stylegan3":  # per-image rotate/translate
            args, shapes, extra_inputs = (ws, torch.eye(3).expand(n, 3, 3).contiguous()), ({0: batch}, {0: batch}), [
                TRANSFORM_INPUT]
        progress(f"[3/5] exporting {SYNTHESIS_FILE} ({'fp16' if fp16 else 'fp32'}, {output} output, "
                 + (f"{len(noise)} noise inputs)" if not extra_inputs else "input transform [batch, 3, 3])"))
        _quiet_export(synthesis_graph(S, output, dtype).eval(), args, tmp / SYNTHESIS_FILE,
                      ["ws", *noise_names, *extra_inputs], ["images"], shapes, opset)
        if config.arch in ("stylegan", "progan"):
            # Only where the batch stays its own axis: StyleGAN2/3 fold it into their convolutions' groups, and an
            # image's result from ONNX Runtime's NCHWc kernels then depends on the batch size it came in.
            drop_zero_conv_bias(tmp / SYNTHESIS_FILE)
        progress("[4/5] checking the graphs (onnx.checker, no random ops, agreement with PyTorch)")
        ops = {name: check_graph(tmp / name) for name in (MAPPING_FILE, SYNTHESIS_FILE)}
        agreement = _compare_with_eager(tmp, G, noise_names, extra_inputs, output, fp16)
        save_extras(tmp, G.w_avg, G.const_noise())
        copy_config(model_dir, tmp)
        manifest = base_manifest(
            model_dir, "onnx",
            opset=opset,
            exporter_version=EXPORTER_VERSION,
            precision="fp16" if fp16 else "fp32",
            output=output,
            max_batch=max_batch,
            batch_range=[1, max_batch],
            arch=config.arch,
            resolution=config.resolution,
            num_ws=config.num_ws,
            c_dim=config.c_dim,
            mapping_inputs=mapping_names,
            noise_inputs=noise_names,
            transform_input=TRANSFORM_INPUT if extra_inputs else None,
            graphs={
                "mapping": {"file": MAPPING_FILE, **_io_description(tmp / MAPPING_FILE), "ops": ops[MAPPING_FILE]},
                "synthesis": {"file": SYNTHESIS_FILE, **_io_description(tmp / SYNTHESIS_FILE),
                              "ops": ops[SYNTHESIS_FILE]},
            },
            between_graphs="truncation and style mixing (ganserve.models.latents) run on the mapping output; "
                           "noise inputs are the constant buffers of latents.safetensors or seeded noise",
            check=agreement,
        )
        write_manifest(tmp, manifest)
        if "warning" in agreement:
            progress(f"warning: {agreement['warning']}")
        progress(f"[5/5] wrote {out} (pixels equal to PyTorch: {agreement['uint8_equal_fraction']:.4%})")
    return out


def _compare_with_eager(directory: Path, G: ProgressiveGenerator, noise_names: list[str], extra_inputs: list[str],
                        output: str, fp16: bool) -> dict[str, Any]:
    """Run both graphs on CPU for three seeds and compare with eager PyTorch (recorded in the manifest); a StyleGAN3
    transform input is checked with the third image rotated and shifted."""
    import onnxruntime as ort

    from ganserve.models.latents import seeds_to_z

    z = torch.from_numpy(seeds_to_z([0, 1, 2], G.config.z_dim))
    c = example_classes(3, G.config.c_dim)
    mapping_args = (z,) if c is None else (z, c)
    transform = None
    if extra_inputs:
        transform = torch.from_numpy(np.stack([image_transform(), image_transform(), image_transform(30, (0.1, -0.2))]))
    with torch.no_grad():
        ws = G.mapping(*mapping_args)
        ref = G.synthesis(ws) if transform is None else G.synthesis(ws, transform=transform)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        mapping = ort.InferenceSession(str(directory / MAPPING_FILE), opts, providers=["CPUExecutionProvider"])
        synthesis = ort.InferenceSession(str(directory / SYNTHESIS_FILE), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # an fp16 graph may need kernels the CPU provider lacks
        return {"skipped": f"CPU provider cannot load the graphs: {str(e).splitlines()[0]}"}
    ws_onnx = mapping.run(None, dict(zip(("z", "c"), (t.numpy() for t in mapping_args))))[0]
    feeds = {"ws": ws.numpy(), **{name: n.expand(3, -1, -1, -1).contiguous().numpy()
                                   for name, n in zip(noise_names, G.const_noise())}}
    if transform is not None:
        feeds[TRANSFORM_INPUT] = transform.numpy()
    images = synthesis.run(None, feeds)[0]
    ref_u8 = to_uint8(ref).numpy()
    got_u8 = images if output == "uint8" else to_uint8(torch.from_numpy(images)).numpy()
    result = {
        "seeds": [0, 1, 2],
        "mapping_max_abs_diff": float(np.abs(ws_onnx - ws.numpy()).max()),
        "uint8_equal_fraction": float((got_u8 == ref_u8).mean()),
    }
    if output == "float":
        result["float_max_abs_diff"] = float(np.abs(images - ref.numpy()).max())
    if not fp16 and result["uint8_equal_fraction"] < 0.99:
        # Is the model itself unstable? Untrained StyleGANs (zero noise strengths, constant input) normalise flat
        # feature maps, so rounding noise decides their pixels: float64 PyTorch disagrees with float32 as much.
        G64 = copy.deepcopy(G).double()
        with torch.no_grad():
            ref64 = to_uint8(G64.synthesis(G64.mapping(*(t.double() for t in mapping_args)))).numpy()
        result["eager_fp32_vs_fp64_equal_fraction"] = float((ref64 == ref_u8).mean())
        if result["eager_fp32_vs_fp64_equal_fraction"] >= 0.99:
            raise ExportError(f"the exported graphs disagree with PyTorch: only {result['uint8_equal_fraction']:.2%} "
                              "of pixels equal")
        result["warning"] = ("this model is numerically unstable (eager float32 and float64 agree on only "
                             f"{result['eager_fp32_vs_fp64_equal_fraction']:.1%} of pixels; untrained?), so "
                             "backends cannot agree on its pixels either")
    return result
