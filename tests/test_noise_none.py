"""noise=none: no noise added (zero noise maps), for StyleGAN and StyleGAN2; ProGAN, which has no noise, ignores it as
it ignores const and random."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_generator
from PIL import Image
from test_stylegan2 import tiny_sg2

from ganserve.errors import SpecError
from ganserve.export.onnx_export import export_onnx
from ganserve.inference.ort import OnnxRuntimeBackend
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec, make_specs, prepare_batch, run_eager
from ganserve.models.weights import save_model

SEEDS = list(range(8))


def build(arch: str, resolution: int = 16):
    if arch == "stylegan2":
        return tiny_sg2(resolution=resolution)
    G = tiny_generator(arch, resolution=resolution)
    # StyleGAN's constant input starts as ones: with no noise its 4x4 maps are flat, and AdaIN's normalisation of a
    # flat map amplifies rounding (float32 and float64 disagree). A trained one is not flat.
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.split(".")[-1] == "const":
                p.normal_(generator=torch.Generator().manual_seed(1))
    return G


def images(G, specs) -> np.ndarray:
    return run_eager(G, prepare_batch(specs, G.config, G.noise_resolutions())).numpy()


def without_noise(G):
    """A copy of G whose noise strengths are zero: what noise=none must draw."""
    H = copy.deepcopy(G)
    with torch.no_grad():
        for name, p in H.named_parameters():
            if name.endswith(("noise.strength", "noise_strength")):
                p.zero_()
    return H


@pytest.mark.parametrize("arch", ["stylegan", "stylegan2"])
def test_no_noise_is_zero_noise_reproducible_and_independent_of_the_batch(arch):
    G = build(arch)
    none = images(G, make_specs(G.config, SEEDS, noise="none", psi=0.7))
    const = images(G, make_specs(G.config, SEEDS, psi=0.7))
    rand = images(G, make_specs(G.config, SEEDS, noise="random", psi=0.7))
    assert (none != const).mean() > 0.05 and (none != rand).mean() > 0.05
    assert np.array_equal(none, images(without_noise(G), make_specs(G.config, SEEDS, psi=0.7)))
    assert np.array_equal(none, images(G, make_specs(G.config, SEEDS, noise="none", psi=0.7)))
    for i, s in enumerate(SEEDS):  # alone, and in a batch that mixes noise modes
        assert np.array_equal(images(G, [make_spec(G.config, s, noise="none", psi=0.7)])[0], none[i])
    crowd = [make_spec(G.config, s, noise=mode, psi=0.7) for s in SEEDS for mode in ("random", "none", "const")]
    got = images(G, crowd)
    assert np.array_equal(got[1::3], none) and np.array_equal(got[2::3], const) and np.array_equal(got[::3], rand)


def test_progan_accepts_no_noise_and_ignores_it_as_const_and_random(model_dirs):
    backend = load_backend(model_dirs["progan"], "torch", "cpu")
    const = backend.generate(make_specs(backend.config, SEEDS))
    for mode in ("none", "random"):
        assert np.array_equal(backend.generate(make_specs(backend.config, SEEDS, noise=mode)), const)
    with pytest.raises(SpecError) as e:
        make_spec(backend.config, 1, noise="off")
    assert e.value.field == "noise" and "const, random, none" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["stylegan", "stylegan2"])
def test_onnx_runtime_and_the_cli_agree_on_no_noise(arch, tmp_path):
    model = save_model(build(arch, resolution=32), tmp_path / arch)  # 32x32: see test_export_onnx.RES
    onnx = OnnxRuntimeBackend(export_onnx(model, max_batch=8, progress=lambda line: None), torch.device("cpu"))
    torch_backend = load_backend(model, "torch", "cpu")
    specs = make_specs(onnx.config, SEEDS, noise="none", psi=0.7) + make_specs(onnx.config, [1, 2], psi=0.7)
    got, want = onnx.generate(specs, batch_size=3).astype(int), torch_backend.generate(specs).astype(int)
    diff = np.abs(got - want)
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1
    assert np.array_equal(onnx.generate(specs, batch_size=1), got)
    r = subprocess.run([sys.executable, "-m", "ganserve.cli", "generate", "--model", str(model), "--seeds", "0-7",
                        "--psi", "0.7", "--noise", "none", "--device", "cpu", "--backend", "torch", "--outdir",
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    cli = np.stack([np.asarray(Image.open(tmp_path / "out" / f"seed{s:04d}.png")) for s in SEEDS])
    assert np.array_equal(cli, want[: len(SEEDS)])
