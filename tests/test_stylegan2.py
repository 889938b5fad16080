"""The StyleGAN2 generator: NVlabs' layout, ganserve's generator interface, batch invariance, ONNX, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganserve.inference.sampling import make_specs, prepare_batch, run_eager
from ganserve.models import ModelConfig, build_generator
from ganserve.models.stylegan2 import StyleGAN2Generator, conv2d_up, setup_filter, upsample2d, zero_insert
from ganserve.models.weights import load_model, save_model

TINY2 = dict(arch="stylegan2", resolution=16, z_dim=16, w_dim=16, channel_base=256, channel_max=32, mapping_layers=2,
             conv_clamp=256.0)


def tiny_sg2(seed: int = 0, **overrides) -> StyleGAN2Generator:
    """A tiny StyleGAN2 with non-zero noise strengths, biases and w_avg, as after training."""
    torch.manual_seed(seed)
    G = build_generator(ModelConfig(**{**TINY2, **overrides}))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.normal_(0, 0.5)
            elif name.endswith("bias") and "affine" not in name:
                p.normal_(0, 0.2)
        G.estimate_w_avg(256)
    return G.eval().requires_grad_(False)


def test_num_ws_and_noise_layers_follow_nvlabs_layout():
    G = tiny_sg2()
    assert G.num_ws == 2 * int(math.log2(16)) - 2 == G.synthesis_net.num_ws
    assert G.noise_resolutions() == [4, 8, 8, 16, 16]
    names = set(G.state_dict())
    for key in ("w_avg", "mapping_net.fc0.weight", "synthesis_net.b4.const", "synthesis_net.b8.conv0.noise_const",
                "synthesis_net.b8.conv0.affine.bias", "synthesis_net.b16.torgb.weight",
                "synthesis_net.b8.resample_filter"):
        assert key in names


def test_fir_upsampling_matches_transposed_convolution_reference():
    """conv2d_up (zero insertion + conv) equals NVlabs' path: conv_transpose2d stride 2, then the padded FIR filter."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    f = setup_filter([1, 3, 3, 1])
    ref = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)  # [2, 4, 11, 11]
    ref = F.conv2d(F.pad(ref, [1, 1, 1, 1]), (f * 4).flip([0, 1])[None, None].repeat(4, 1, 1, 1), groups=4)
    torch.testing.assert_close(conv2d_up(x, w, f, padding=1), ref, atol=1e-5, rtol=1e-5)
    img = torch.randn(2, 3, 5, 5)
    up = upsample2d(img, f)
    ref_up = F.conv2d(F.pad(zero_insert(img), [2, 1, 2, 1]), (f * 4)[None, None].repeat(3, 1, 1, 1), groups=3)
    torch.testing.assert_close(up, ref_up)
    assert up.shape == (2, 3, 10, 10)
    torch.testing.assert_close(upsample2d(torch.ones(1, 1, 6, 6), f)[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))


def test_demodulation_gives_unit_output_scale():
    """With unit-variance input, demodulated conv outputs keep about unit std whatever the style magnitude."""
    G = tiny_sg2()
    layer = G.synthesis_net.b8.conv1
    from ganserve.models.stylegan2 import modulated_conv2d

    x = torch.randn(4, layer.weight.shape[1], 8, 8)
    for scale in (0.1, 1.0, 10.0):
        y = modulated_conv2d(x, layer.weight, torch.rand(4, x.shape[1]) * scale + 0.1, padding=1)
        assert 0.7 < y.std().item() < 1.3


@pytest.mark.parametrize("arch_kind", ["skip", "orig", "resnet"])
def test_same_seed_same_pixels_for_every_batch_size_1_to_17(arch_kind):
    G = tiny_sg2(architecture=arch_kind)
    specs = make_specs(G.config, list(range(17)), psi=0.7)
    full = run_eager(G, prepare_batch(specs, G.config, G.noise_resolutions()))
    assert full.dtype == torch.uint8 and full.shape == (17, 16, 16, 3)
    for n in (1, 2, 3, 5, 8, 16):
        parts = [run_eager(G, prepare_batch(specs[i : i + n], G.config, G.noise_resolutions()))
                 for i in range(0, 17, n)]
        assert torch.equal(torch.cat(parts), full), f"batch size {n} changed pixels ({arch_kind})"


def test_random_noise_and_mixing_change_the_image_reproducibly():
    G = tiny_sg2()
    base = run_eager(G, prepare_batch(make_specs(G.config, [3]), G.config, G.noise_resolutions()))
    for params in (dict(noise="random"), dict(mix_seed=9, mix_layers="coarse"), dict(psi=0.0)):
        specs = make_specs(G.config, [3], **params)
        a = run_eager(G, prepare_batch(specs, G.config, G.noise_resolutions()))
        b = run_eager(G, prepare_batch(specs * 2, G.config, G.noise_resolutions()))[:1]
        assert not torch.equal(a, base), params
        assert torch.equal(a, b), params


def test_save_and_load_round_trip_gives_the_same_image(tmp_path):
    G = tiny_sg2(architecture="resnet", c_dim=3)
    save_model(G, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["arch"] == "stylegan2" and config["c_dim"] == 3 and config["architecture"] == "resnet"
    G2 = load_model(tmp_path / "m")
    z, c = torch.randn(2, 16), F.one_hot(torch.tensor([0, 2]), 3).float()
    assert torch.equal(G(z, c), G2(z, c))
    with pytest.raises(ValueError, match="class-conditional"):
        G2.mapping(z)


def test_other_architectures_keep_their_config_json_keys():
    d = ModelConfig(arch="stylegan", resolution=16).to_dict()
    assert "conv_clamp" not in d and "source" not in d
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(**{**TINY2, "architecture": "fancy"})
    with pytest.raises(ValueError, match="channels_per_resolution"):
        ModelConfig(**{**TINY2, "channels_per_resolution": {"4": 8}})


def ganserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_init_info_generate_and_onnx_export_agree(tmp_path):
    model = tmp_path / "sg2"
    r = ganserve("init", "--arch", "stylegan2", "--resolution", "16", "--z-dim", "16", "--w-dim", "16",
                 "--channel-base", "256", "--channel-max", "32", "--mapping-layers", "2", "--conv-clamp", "256",
                 "--out", str(model))
    assert r.returncode == 0, r.stderr
    r = ganserve("info", str(model))
    assert r.returncode == 0 and "stylegan2" in r.stdout and "num_ws:       6" in r.stdout, r.stdout + r.stderr
    # a trained-looking model: noise and biases matter
    save_model(tiny_sg2(), model)
    out = {}
    for backend in ("torch", "onnxruntime"):
        r = ganserve("generate", "--model", str(model), "--seeds", "0-7", "--psi", "0.8", "--batch-size", "3",
                     "--backend", backend, "--device", "cpu", "--outdir", str(tmp_path / backend), "--quiet")
        assert r.returncode == 0, r.stderr
        from PIL import Image

        out[backend] = np.stack([np.asarray(Image.open(tmp_path / backend / f"seed{s:04d}.png")) for s in range(8)])
    diff = np.abs(out["torch"].astype(int) - out["onnxruntime"].astype(int))
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1
