"""Reduced precision of StyleGAN2/3 as their source ran it: float32 by default everywhere; on request (precision fp16 on
CUDA) only the layers NVlabs ran in float16 (`use_fp16`, the num_fp16_res highest resolutions), the rest float32.

The layer selection and the casts between layers are checked on the CPU with bfloat16 (CPU autocast has no float16
convolutions); the CUDA run itself needs a GPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_stylegan2 import tiny_sg2

from ganserve.errors import BackendUnavailable
from ganserve.imaging import to_uint8
from ganserve.inference.registry import load_backend
from ganserve.models import build_generator
from ganserve.models.config import ModelConfig
from ganserve.models.latents import seeds_to_z
from ganserve.models.weights import save_model


def tiny_sg3_fp16(num_fp16_res: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(arch="stylegan3", resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                         channel_max=32, sg3_config="t", conv_clamp=256, num_fp16_res=num_fp16_res)
    G = build_generator(config).eval().requires_grad_(False)
    G.estimate_w_avg(256)
    return G


def module_outputs(G, modules) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The image for seeds 0-3 and each module's (first) output."""
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(
        (out[0] if isinstance(out, tuple) else out).float().clone())) for m in modules]
    try:
        with torch.no_grad():
            img = G.synthesis(G.mapping(torch.from_numpy(seeds_to_z([0, 1, 2, 3], G.config.z_dim))))
    finally:
        for h in hooks:
            h.remove()
    return img, outputs


@pytest.mark.parametrize("arch", ["stylegan2", "stylegan3"])
def test_only_the_sources_float16_layers_run_in_reduced_precision(arch):
    G = tiny_sg2(num_fp16_res=2) if arch == "stylegan2" else tiny_sg3_fp16(num_fp16_res=1)
    modules = G.synthesis_net.blocks() if arch == "stylegan2" else G.synthesis_net.layers()
    half = G.half_layers()
    if arch == "stylegan2":
        assert [b.resolution for b in half] == [8, 16]  # the 2 highest resolutions
    else:
        flags = [spec["use_fp16"] for spec in G.config.sg3_layers]
        assert half == [m for m, fp16 in zip(modules, flags) if fp16] and 0 < len(half) < len(modules)
    ref, ref_out = module_outputs(G, modules)

    assert G.set_half_layers(torch.bfloat16) == half
    img, out = module_outputs(G, modules)
    first = modules.index(half[0])
    for k, m in enumerate(modules):
        if k < first:  # before the reduced-precision layers: untouched, bit for bit
            assert torch.equal(out[k], ref_out[k]), k
        elif m in half:  # these ran in bfloat16: close, not equal
            assert not torch.equal(out[k], ref_out[k]) and torch.isfinite(out[k]).all(), k
    assert img.dtype == torch.float32  # the image comes out in float32 whatever ran inside
    diff = np.abs(to_uint8(img).numpy().astype(int) - to_uint8(ref).numpy().astype(int))
    assert (diff <= 8).mean() > 0.9, diff.mean()  # the same picture, at bfloat16's precision

    G.set_half_layers(None)
    again, _ = module_outputs(G, modules)
    assert torch.equal(again, ref)  # float32 again, bit for bit


def test_models_without_float16_layers_have_none():
    assert tiny_sg2().half_layers() == [] and tiny_sg3_fp16(0).half_layers() == []


def test_precision_is_a_cuda_option_of_the_pytorch_backends(tmp_path):
    model = save_model(tiny_sg2(num_fp16_res=2), tmp_path / "sg2")
    backend = load_backend(model, "torch", "cpu")
    assert backend.precision == "fp32" and backend.half_layers == 0
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        load_backend(model, "torch", "cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision is an option of the torch, compile and tensorrt"):
        load_backend(model, "onnxruntime", "cpu", precision="fp16")
    r = subprocess.run([sys.executable, "-m", "ganserve.cli", "generate", "--model", str(model), "--seeds", "0",
                        "--precision", "fp16", "--device", "cpu", "--outdir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "fp16 inference needs a CUDA device" in r.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_runs_the_sources_float16_layers_and_agrees_with_fp32(tmp_path):
    model = save_model(tiny_sg2(num_fp16_res=2), tmp_path / "sg2")
    plain = save_model(tiny_sg2(), tmp_path / "plain")
    fp32 = load_backend(model, "torch", "cuda")
    assert fp32.precision == "fp32"  # imported StyleGANs run in float32 unless asked
    fp16 = load_backend(model, "torch", "cuda", precision="fp16")
    assert fp16.half_layers == 2 and "2 float16 layers" in fp16.describe()
    from ganserve.inference.sampling import make_specs

    specs = make_specs(fp32.config, list(range(8)))
    diff = np.abs(fp16.generate(specs).astype(int) - fp32.generate(specs).astype(int))
    assert (diff <= 2).mean() > 0.99, diff.mean()
    with pytest.raises(BackendUnavailable, match="no float16 layers"):
        load_backend(plain, "torch", "cuda", precision="fp16")
