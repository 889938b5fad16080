"""StyleGAN3 (configs T and R): the generator, `ganserve init/info/generate`, and `ganserve import` of NVlabs
stylegan3 network pickles, checked against an independent transcription of NVlabs' reference math.

The writer below produces NVlabs-format pickles of networks_stylegan3 generators without NVIDIA's code (as
tests/test_import_stylegan2.py does for StyleGAN2): attributes are stored as NVlabs stores them (numpy sizes and
cutoffs, ints, lists), and its forward is NVlabs' reference path written out again: fused modulated conv over the
whole batch, `upfirdn2d`'s zero insertion / padding / FIR / down-sampling, affine_grid Fourier features.
"""

from __future__ import annotations

import json
import math
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_import_stylegan2 import FullyConnectedLayer, MappingNetwork, Persistent, fake_nvlabs_modules, ganserve
from torch import nn

from ganserve.errors import SpecError
from ganserve.export.onnx_export import export_onnx
from ganserve.imaging import to_uint8
from ganserve.inference.sampling import make_specs, prepare_batch, run_eager
from ganserve.models import ModelConfig, build_generator
from ganserve.models.config import stylegan3_layout
from ganserve.models.latents import layer_presets, make_transform, parse_layers, seeds_to_z, truncation
from ganserve.models.stylegan3 import design_lowpass_filter
from ganserve.models.weights import load_model, save_model

Z = 16


# -- the independent reference (NVlabs' reference path, written out again) ---------------------------------------
def upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """NVlabs' _upfirdn2d_ref: zero insertion, pad/crop, true convolution (1D f: separable), keep every down-th."""
    n, c, h, w = x.shape
    if f is None:
        f = torch.ones([1, 1])
    x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(pad[0], 0), max(pad[1], 0), max(pad[2], 0), max(pad[3], 0)])
    x = x[:, :, max(-pad[2], 0): x.shape[2] - max(-pad[3], 0), max(-pad[0], 0): x.shape[3] - max(-pad[1], 0)]
    f = (f * gain ** (f.ndim / 2)).flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def lowpass(numtaps, cutoff, width, fs, radial=False):
    """The writer's filters: scipy's, as NVlabs designs them (ganserve's own design when scipy is missing)."""
    try:
        import scipy.signal
        import scipy.special
    except ImportError:
        return design_lowpass_filter(numtaps, cutoff, width, fs, radial)
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f *= np.outer(w, w)
    return torch.as_tensor(f / np.sum(f), dtype=torch.float32)


class SynthesisInput(Persistent):
    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = np.broadcast_to(np.asarray(size), [2])
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4)  # random (not NVlabs' zero init): rotations and translations
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand([channels]) - 0.5)

    def forward(self, w):
        n = w.shape[0]
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3).unsqueeze(0).repeat([n, 1, 1])
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3).unsqueeze(0).repeat([n, 1, 1])
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3)
        theta[0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[1, 1] = 0.5 * self.size[1] / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, int(self.size[1]), int(self.size[0])], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (np.pi * 2)) * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(Persistent):
    def __init__(self, w_dim, spec, conv_clamp):
        super().__init__()
        self.w_dim, self.is_torgb = w_dim, spec["is_torgb"]
        self.is_critically_sampled, self.use_fp16 = spec["is_critically_sampled"], spec["use_fp16"]
        self.in_channels, self.out_channels = spec["in_channels"], spec["out_channels"]
        self.in_size = np.broadcast_to(np.asarray(spec["in_size"]), [2])
        self.out_size = np.broadcast_to(np.asarray(spec["out_size"]), [2])
        self.in_sampling_rate, self.out_sampling_rate = spec["in_sampling_rate"], spec["out_sampling_rate"]
        self.tmp_sampling_rate = spec["in_sampling_rate"] * spec["up_factor"]
        self.in_cutoff, self.out_cutoff = np.float64(spec["in_cutoff"]), np.float64(spec["out_cutoff"])
        self.in_half_width, self.out_half_width = np.float64(spec["in_half_width"]), np.float64(spec["out_half_width"])
        self.conv_kernel, self.conv_clamp, self.magnitude_ema_beta = spec["conv_kernel"], conv_clamp, 0.999
        self.affine = FullyConnectedLayer(w_dim, self.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([self.out_channels, self.in_channels, self.conv_kernel,
                                                self.conv_kernel]))
        self.bias = nn.Parameter(torch.randn([self.out_channels]) * 0.2)
        self.register_buffer("magnitude_ema", torch.rand([]) + 0.3)
        self.up_factor, self.up_taps = spec["up_factor"], spec["up_taps"]
        self.register_buffer("up_filter", lowpass(self.up_taps, self.in_cutoff, self.in_half_width * 2,
                                                  self.tmp_sampling_rate))
        self.down_factor, self.down_taps, self.down_radial = spec["down_factor"], spec["down_taps"], spec["down_radial"]
        self.register_buffer("down_filter", lowpass(self.down_taps, self.out_cutoff, self.out_half_width * 2,
                                                    self.tmp_sampling_rate, self.down_radial))
        self.padding = list(spec["padding"])

    def forward(self, x, w):
        n = x.shape[0]
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel**2))
        weight, demodulate = self.weight, not self.is_torgb
        if demodulate:  # NVlabs' modulated_conv2d: styles normalised over the whole batch, fused grouped conv
            weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean().rsqrt()
        wt = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
        if demodulate:
            wt = wt * (wt.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
        wt = wt * self.magnitude_ema.rsqrt()
        k = self.conv_kernel
        x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), wt.reshape(-1, self.in_channels, k, k), padding=k - 1, groups=n)
        x = x.reshape(n, -1, *x.shape[2:])
        # filtered_lrelu's reference path
        gain, slope = (1.0, 1.0) if self.is_torgb else (np.sqrt(2), 0.2)
        x = x + self.bias.reshape(1, -1, 1, 1)
        x = upfirdn2d(x, self.up_filter, up=self.up_factor, pad=self.padding, gain=self.up_factor**2)
        x = F.leaky_relu(x, slope) * gain
        x = x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x
        return upfirdn2d(x, self.down_filter, down=self.down_factor)


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim, img_resolution, img_channels, cfg, conv_clamp, channel_base, channel_max):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self._init_kwargs = dict(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                 channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp,
                                 num_layers=6, num_critical=2, margin_size=4)
        inp, layers = stylegan3_layout(img_resolution, img_channels, channel_base, channel_max, num_layers=6,
                                       margin_size=4, conv_kernel=1 if cfg == "r" else 3,
                                       use_radial_filters=cfg == "r", num_fp16_res=1)
        self.num_layers, self.num_critical, self.margin_size, self.output_scale = 6, 2, 4, 0.25
        self.num_fp16_res, self.num_ws = 1, len(layers) + 1
        self.input = SynthesisInput(w_dim, inp["channels"], inp["size"], np.float64(inp["sampling_rate"]),
                                    np.float64(inp["bandwidth"]))
        self.layer_names = []
        for spec in layers:
            setattr(self, spec["name"], SynthesisLayer(w_dim, spec, conv_clamp))
            self.layer_names.append(spec["name"])

    def forward(self, ws):
        ws = ws.unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w)
        return x * self.output_scale


class Generator(Persistent):
    def __init__(self, cfg="t", c_dim=0, img_resolution=16, conv_clamp=256, easydict=dict):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = Z, c_dim, Z, img_resolution, 3
        self._init_args = ()
        self._init_kwargs = dict(z_dim=Z, c_dim=c_dim, w_dim=Z, mapping_kwargs=easydict(num_layers=2))
        base = 512 if cfg == "r" else 256
        self.synthesis = SynthesisNetwork(Z, img_resolution, 3, cfg, conv_clamp, base, base // 8)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(Z, c_dim, Z, self.num_ws)

    def forward(self, z, c, psi=1.0):
        return self.synthesis(self.mapping(z, c, psi))


def write_sg3_pickle(path, seed=0, rotate=0.0, **kwargs) -> Generator:
    """A stylegan3 network-snapshot-like file {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}."""
    with fake_nvlabs_modules() as mods:
        EasyDict = mods["dnnlib.util"].EasyDict
        torch.manual_seed(seed)
        G = Generator(easydict=EasyDict, **kwargs).eval().requires_grad_(False)
        G_ema = Generator(easydict=EasyDict, **kwargs).eval().requires_grad_(False)
        if rotate:
            m = np.linalg.inv(make_transform((0.1, -0.05), rotate))
            G_ema.synthesis.input.transform.copy_(torch.from_numpy(m))
        data = dict(G=G, D=FullyConnectedLayer(4, 1), G_ema=G_ema, augment_pipe=None,
                    training_set_kwargs=EasyDict(path="data.zip", resolution=G.img_resolution, use_labels=False))
        path.write_bytes(pickle.dumps(data))
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    return G_ema


def tiny_sg3(cfg: str = "t", resolution: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(arch="stylegan3", resolution=resolution, z_dim=Z, w_dim=Z, mapping_layers=2,
                         channel_base=256, channel_max=32, sg3_config=cfg, conv_clamp=256)
    G = build_generator(config).eval().requires_grad_(False)
    with torch.no_grad():
        for layer in G.synthesis_net.layers():
            layer.bias.normal_(0, 0.2)
            layer.magnitude_ema.fill_(0.5)
    G.estimate_w_avg(256)
    return G


# -- import ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, c_dim, clamp, rotate", [("t", 0, 256, 0.0), ("r", 0, 256, 0.0), ("t", 3, None, 30.0)])
def test_imported_stylegan3_pickle_gives_the_reference_images(tmp_path, cfg, c_dim, clamp, rotate):
    pkl = tmp_path / "network-snapshot-000042.pkl"
    ref_G = write_sg3_pickle(pkl, cfg=cfg, c_dim=c_dim, conv_clamp=clamp, rotate=rotate)
    out = tmp_path / "imported"
    r = ganserve("import", str(pkl), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "StyleGAN3" in r.stdout and f"config {cfg.upper()}" in r.stdout and "[5/5]" in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "stylegan3" and config["sg3_config"] == cfg and config["num_ws"] == 8
    assert config["conv_clamp"] == clamp and config["c_dim"] == c_dim and config["output_scale"] == 0.25
    stored = ref_G.synthesis
    assert [layer["name"] for layer in config["sg3_layers"]] == stored.layer_names
    for spec in config["sg3_layers"]:  # every constant is the stored one
        layer = getattr(stored, spec["name"])
        assert spec["padding"] == layer.padding and spec["out_cutoff"] == float(layer.out_cutoff)
        assert spec["in_size"] == int(layer.in_size[0]) and spec["down_radial"] == layer.down_radial
        assert spec["use_fp16"] == layer.use_fp16
    assert config["sg3_input"]["size"] == int(stored.input.size[0])

    G = load_model(out)
    assert G.noise_resolutions() == [] and G.const_noise() == []
    seeds = list(range(6))
    z = torch.from_numpy(seeds_to_z(seeds, Z))
    c = F.one_hot(torch.tensor(seeds) % max(c_dim, 1), max(c_dim, 1)).float() if c_dim else None
    for psi in (1.0, 0.7):
        with torch.no_grad():
            ref = ref_G(z, c if c is not None else torch.zeros(6, 0), psi)
            got = G.synthesis(truncation(G.mapping(z, c), G.w_avg, psi))
        assert ref.shape == got.shape == (6, 3, 16, 16)
        assert 0.05 < ref.std() < 2
        assert (got - ref).abs().max() <= 1e-4
        assert (to_uint8(got) == to_uint8(ref)).float().mean() >= 0.999
    if not c_dim:  # the serving path
        u8 = run_eager(G, prepare_batch(make_specs(G.config, seeds, psi=0.7), G.config, G.noise_resolutions()))
        assert (u8 == to_uint8(ref)).float().mean() >= 0.999


def test_import_of_G_then_info_and_generate(tmp_path):
    pkl = tmp_path / "snap.pkl"
    write_sg3_pickle(pkl, cfg="r")
    out = tmp_path / "m"
    assert ganserve("import", str(pkl), "--out", str(out), "--network", "G").returncode == 0
    assert json.loads((out / "config.json").read_text())["source"]["network"] == "G"
    info = ganserve("info", str(out))
    assert info.returncode == 0 and "stylegan3" in info.stdout and "config R" in info.stdout
    r = ganserve("generate", "--model", str(out), "--seeds", "0-2", "--psi", "0.7", "--backend", "torch",
                 "--device", "cpu", "--outdir", str(tmp_path / "imgs"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 3


def _damaged(tmp_path, change):
    pkl = tmp_path / "bad.pkl"
    with fake_nvlabs_modules() as mods:
        torch.manual_seed(0)
        G = Generator(easydict=mods["dnnlib.util"].EasyDict)
        change(G)
        pkl.write_bytes(pickle.dumps(dict(G_ema=G)))
    return pkl


@pytest.mark.parametrize("what, change, message", [
    ("padding", lambda G: setattr(getattr(G.synthesis, G.synthesis.layer_names[0]), "padding", [1, 1, 1, 1]),
     "padding"),
    ("filter", lambda G: getattr(G.synthesis, G.synthesis.layer_names[1]).register_buffer(
        "down_filter", torch.ones(5)), "down_filter"),
    ("num_ws", lambda G: setattr(G, "num_ws", 9), "num_ws"),
    ("size", lambda G: setattr(getattr(G.synthesis, G.synthesis.layer_names[2]), "in_size", np.array([36, 30])),
     "square"),
])
def test_inconsistent_stylegan3_pickles_are_refused_with_one_line_and_nothing_written(tmp_path, what, change,
                                                                                      message):
    pkl = _damaged(tmp_path, change)
    out = tmp_path / "out"
    r = ganserve("import", str(pkl), "--out", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.pkl"]


# -- the generator ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ["t", "r"])
def test_same_seed_same_pixels_for_batch_sizes_1_to_17(cfg):
    G = tiny_sg3(cfg)
    specs = make_specs(G.config, list(range(17)), psi=0.7)
    full = run_eager(G, prepare_batch(specs, G.config, []))
    for n in range(1, 18):
        part = run_eager(G, prepare_batch(specs[17 - n:], G.config, []))  # the last n seeds: other neighbours
        assert torch.equal(part, full[17 - n:]), n


def test_new_model_layout_is_nvlabs_one():
    """stylegan3_layout reproduces NVlabs' SynthesisNetwork(img_resolution=16, channel_base=256, channel_max=32)."""
    inp, layers = stylegan3_layout(16, 3, 256, 32)
    assert inp == dict(channels=32, size=36, sampling_rate=16.0, bandwidth=2.0)
    assert [spec["name"] for spec in layers] == [
        "L0_36_32", "L1_36_32", "L2_36_32", "L3_36_32", "L4_36_32", "L5_36_32", "L6_36_32", "L7_36_29", "L8_36_25",
        "L9_36_23", "L10_36_20", "L11_36_18", "L12_36_16", "L13_16_16", "L14_16_3"]
    assert layers[0]["padding"] == [9, 8, 9, 8] and layers[0]["up_taps"] == 12
    assert layers[-1]["conv_kernel"] == 1 and layers[-1]["up_taps"] == layers[-1]["down_taps"] == 1
    assert math.isclose(layers[12]["out_cutoff"], 8.0) and layers[13]["is_critically_sampled"]


def test_filter_design_matches_scipy():
    scipy_signal = pytest.importorskip("scipy.signal")
    for numtaps, cutoff, width, fs in ((12, 2.0, 6.0, 32), (24, 5.66, 4.3, 64)):
        ref = scipy_signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        assert np.allclose(design_lowpass_filter(numtaps, cutoff, width, fs).numpy(), ref, atol=1e-7)
    pytest.importorskip("scipy.special")
    assert torch.allclose(design_lowpass_filter(12, 3.0, 5.0, 32, radial=True), lowpass(12, 3.0, 5.0, 32, True),
                          atol=1e-7)


def test_init_info_and_saved_model_round_trip(tmp_path):
    out = tmp_path / "new"
    r = ganserve("init", "--arch", "stylegan3", "--config", "r", "--resolution", "16", "--z-dim", "16",
                 "--w-dim", "16", "--channel-base", "256", "--channel-max", "32", "--out", str(out))
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "stylegan3" and config["sg3_config"] == "r" and config["num_ws"] == 16
    assert all(spec["conv_kernel"] == 1 for spec in config["sg3_layers"])
    assert "architecture" not in config and "resample_filter" not in config  # StyleGAN2's fields stay out
    info = ganserve("info", "--arch", "stylegan3", "--resolution", "64")
    assert info.returncode == 0 and "num_ws:       16" in info.stdout and "config T" in info.stdout
    G = tiny_sg3("r")
    save_model(G, tmp_path / "saved")
    H = load_model(tmp_path / "saved")
    z = torch.from_numpy(seeds_to_z([1, 2], Z))
    with torch.no_grad():
        assert torch.equal(G(z), H(z))


def test_style_mixing_presets_map_stylegan3_ws_by_the_resolution_they_draw():
    config = ModelConfig(arch="stylegan3", resolution=256, channel_base=1024, channel_max=64)
    presets = layer_presets(config)
    assert presets["coarse"] == (0, 1, 2, 3) and presets["middle"] == (4, 5, 6, 7)
    assert presets["fine"] == tuple(range(8, 16)) and presets["all"] == tuple(range(16))
    assert parse_layers("0-15", config) == tuple(range(16))
    with pytest.raises(SpecError, match="0-15"):
        parse_layers("16", config)
    for res in (8, 64, 1024):  # other architectures: unchanged
        num_ws = 2 * int(math.log2(res)) - 2
        assert layer_presets(res)["all"] == tuple(range(num_ws))
        assert layer_presets(ModelConfig(arch="stylegan2", resolution=res)) == layer_presets(res)


def test_set_transform_rotates_as_nvlabs_gen_images():
    """set_transform(angle, translate) = NVlabs' inverse make_transform in the input's transform buffer; rotating by
    90 degrees then -90 gives the original image back."""
    G = tiny_sg3("r")
    z = torch.from_numpy(seeds_to_z([3], Z))
    with torch.no_grad():
        base = G(z)
        G.set_transform(angle=30.0, translate=(0.1, 0.0))
        expected = torch.from_numpy(np.linalg.inv(make_transform((0.1, 0.0), 30.0))).float()
        assert torch.allclose(G.synthesis_net.input.transform, expected)
        rotated = G(z)
        G.set_transform()
        again = G(z)
    assert (rotated - base).abs().max() > 1e-3
    assert torch.equal(again, base)


def test_onnx_export_agrees_with_torch(tmp_path):
    from ganserve.inference.ort import OnnxRuntimeBackend
    from ganserve.inference.torch_backend import TorchBackend

    model = save_model(tiny_sg3("t", resolution=32), tmp_path / "m")
    cpu = torch.device("cpu")
    eager, onnx = TorchBackend(model, cpu), OnnxRuntimeBackend(export_onnx(model, max_batch=8,
                                                                           progress=lambda line: None), cpu)
    for n in (1, 5):
        inputs = eager.prepare(make_specs(eager.config, list(range(10, 10 + n)), psi=0.7))
        want, got = eager.run(inputs).numpy(), onnx.run(inputs).numpy()
        assert got.dtype == np.uint8 and got.shape == want.shape == (n, 32, 32, 3)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.999
    specs = make_specs(onnx.config, list(range(9)), psi=0.5)
    assert np.array_equal(onnx.generate(specs), np.concatenate([onnx.generate([s]) for s in specs]))


def test_mixing_presets_of_a_request_follow_stylegan3s_own_ws():
    """make_spec (the CLI and the server validate through it) maps presets onto StyleGAN3's 16 ws at 1024x1024,
    where StyleGAN2's numbering would allow indices up to 17."""
    from ganserve.inference.sampling import make_spec

    config = ModelConfig(arch="stylegan3", resolution=1024)
    chosen = {p: make_spec(config, 1, mix_seed=2, mix_layers=p).mix_layers for p in ("coarse", "middle", "fine")}
    assert sorted(sum(chosen.values(), ())) == list(range(config.num_ws)) == list(range(16))
    with pytest.raises(SpecError) as e:
        make_spec(config, 1, mix_seed=2, mix_layers="16-17")
    assert e.value.field == "mix_layers"
