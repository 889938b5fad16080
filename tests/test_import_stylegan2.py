"""`ganserve import` of NVlabs stylegan2-ada-pytorch network pickles and rosinality checkpoints, without their code.

A tiny writer below produces files in NVlabs' format: its modules pickle as torch_utils.persistence does (a call of
`_reconstruct_persistent_obj(meta)` with the class's source code, name and state), under fake `torch_utils` and
`dnnlib` modules that exist only while writing. Its forward is an independent transcription of NVlabs' reference
math (fused modulated conv, conv_transpose2d, upfirdn2d), so the imported images are checked against it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganserve.imaging import to_uint8
from ganserve.inference.sampling import make_specs, prepare_batch, run_eager
from ganserve.models.latents import seeds_to_z, truncation
from ganserve.models.weights import load_model

REPO = Path(__file__).resolve().parent.parent
FAKE_SRC = "import os\nos.system('echo the embedded source ran')  # must never run\n"


# -- the NVlabs-format writer ----------------------------------------------------------------------------------
@contextlib.contextmanager
def fake_nvlabs_modules():
    """`torch_utils.persistence` and `dnnlib.util` in sys.modules while writing, removed afterwards."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    assert not any(n in sys.modules for n in names)
    mods = {n: types.ModuleType(n) for n in names}

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - only its name is pickled
        raise AssertionError("never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods["dnnlib.util"].EasyDict = EasyDict
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for n in names:
            sys.modules.pop(n, None)


class Persistent(nn.Module):
    """Pickles like an NVlabs @persistent_class: _reconstruct_persistent_obj(meta) with source, name and state."""

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=FAKE_SRC, class_name=type(self).__name__,
                    state=dict(self.__dict__))
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,), None)


def setup_filter(taps):
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, pad=(0, 0, 0, 0), gain=1.0):
    """NVlabs' _upfirdn2d_ref (down=1): zero insertion, pad, true convolution with f * gain per channel."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, list(pad))
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def bias_act(x, b, act="linear", gain=1.0, clamp=None):
    x = x + b.reshape(1, -1, *([1] * (x.ndim - 2))) if b is not None else x
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def modulated_conv2d(x, weight, styles, demodulate=True, up=1, padding=0, f=None):
    """NVlabs' fused path: per-sample weights, grouped (transposed) convolution."""
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    w = weight[None] * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    if up == 1:
        x = F.conv2d(x, w.reshape(-1, i, kh, kw), padding=padding, groups=n)
    else:
        wt = w.transpose(1, 2).reshape(n * i, o, kh, kw)
        x = F.conv_transpose2d(x, wt, stride=2, groups=n)
        x = upfirdn2d(x, f, pad=(1, 1, 1, 1), gain=4)
    return x.reshape(n, o, *x.shape[2:])


class FullyConnectedLayer(Persistent):
    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self._init_args, self._init_kwargs = (in_features, out_features), dict(activation=activation)
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], np.float32(bias_init)) + 0.1 * torch.randn(out_features))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        x = x.matmul((self.weight * self.weight_gain).t())
        return bias_act(x, self.bias * self.bias_gain, self.activation, math.sqrt(2) if self.activation == "lrelu"
                        else 1.0)


class MappingNetwork(Persistent):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = 0.995
        embed = w_dim if c_dim else 0
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        feats = [z_dim + embed] + [w_dim] * num_layers
        for k in range(num_layers):
            setattr(self, f"fc{k}", FullyConnectedLayer(feats[k], feats[k + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.randn(w_dim) * 0.3)

    def forward(self, z, c, psi=1.0):
        norm = lambda v: v * (v.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # noqa: E731
        x = norm(z)
        if self.c_dim:
            x = torch.cat([x, norm(self.embed(c))], dim=1)
        for k in range(self.num_layers):
            x = getattr(self, f"fc{k}")(x)
        return self.w_avg.lerp(x.unsqueeze(1).repeat(1, self.num_ws, 1), psi)


class SynthesisLayer(Persistent):
    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None, activation="lrelu"):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, True, activation
        self.conv_clamp, self.padding, self.act_gain = conv_clamp, 1, math.sqrt(2)
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.randn([]) * 0.5)
        self.bias = nn.Parameter(torch.randn(out_channels) * 0.2)

    def forward(self, x, w, gain=1.0):
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, padding=self.padding, f=self.resample_filter)
        x = x + self.noise_const * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, "lrelu", self.act_gain * gain, clamp)


class ToRGBLayer(Persistent):
    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1) * 0.2)
        self.bias = nn.Parameter(torch.randn(out_channels) * 0.1)
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x, w):
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(Persistent):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = "linear", 2, 1, None
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.padding, self.act_gain = 0, 1.0
        self.weight_gain = 1 / np.sqrt(in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = None

    def forward(self, x, gain):
        x = F.conv2d(x, self.weight * self.weight_gain)
        return upfirdn2d(x, self.resample_filter, up=2, pad=(2, 1, 2, 1), gain=4) * gain


class SynthesisBlock(Persistent):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture, conv_clamp):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution, self.img_channels = in_channels, w_dim, resolution, img_channels
        self.is_last, self.architecture, self.use_fp16, self.channels_last = is_last, architecture, False, False
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels)

    def forward(self, x, img, ws):
        n, ws = ws.shape[0], iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.conv1(self.const.unsqueeze(0).repeat(n, 1, 1, 1), next(ws))
        elif self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(ws))
            x = y + self.conv1(x, next(ws), gain=np.sqrt(0.5))
        else:
            x = self.conv1(self.conv0(x, next(ws)), next(ws))
        if img is not None:
            img = upfirdn2d(img, self.resample_filter, up=2, pad=(2, 1, 2, 1), gain=4)
        if self.num_torgb:
            y = self.torgb(x, next(ws))
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim, img_resolution, img_channels, channels, architecture, conv_clamp):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self._init_kwargs = dict(channel_base=4 * img_resolution, channel_max=channels[4])
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   res == img_resolution, architecture, conv_clamp)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws):
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        return img


class Generator(Persistent):
    def __init__(self, z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, architecture="skip",
                 conv_clamp=256, easydict=dict):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self._init_args = ()
        self._init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, mapping_kwargs=easydict(num_layers=2),
                                 synthesis_kwargs=easydict(architecture=architecture, conv_clamp=conv_clamp))
        channels = {r: max(4, 64 // r * 2) for r in (2, 4, 8, 16, 32, 64)}
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channels, architecture, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws)

    def forward(self, z, c, psi=1.0):
        return self.synthesis(self.mapping(z, c, psi))


def write_nvlabs_pickle(path: Path, seed: int = 0, **kwargs) -> Generator:
    """A network-snapshot-like file: {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}; returns G_ema."""
    with fake_nvlabs_modules() as mods:
        EasyDict = mods["dnnlib.util"].EasyDict
        torch.manual_seed(seed)
        G = Generator(easydict=EasyDict, **kwargs).eval().requires_grad_(False)
        G_ema = Generator(easydict=EasyDict, **kwargs).eval().requires_grad_(False)
        data = dict(G=G, D=FullyConnectedLayer(4, 1), G_ema=G_ema, augment_pipe=None,
                    training_set_kwargs=EasyDict(path="data.zip", resolution=G.img_resolution, use_labels=False))
        path.write_bytes(pickle.dumps(data))
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    return G_ema


def ganserve(*args: str) -> subprocess.CompletedProcess:
    """`ganserve` in a fresh interpreter in which no torch_utils or dnnlib module exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


# -- imports that work -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("res, arch, c_dim, clamp", [(16, "skip", 0, 256), (16, "resnet", 3, None), (8, "orig", 0, 1)])
def test_imported_nvlabs_pickle_gives_the_reference_images(tmp_path, res, arch, c_dim, clamp):
    pkl = tmp_path / "network-snapshot-000123.pkl"
    ref_G = write_nvlabs_pickle(pkl, img_resolution=res, architecture=arch, c_dim=c_dim, conv_clamp=clamp)
    out = tmp_path / "imported"
    r = ganserve("import", str(pkl), "--out", str(out), "--license", "CC BY-NC 4.0 (test)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") >= 5 and "[5/5]" in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "stylegan2" and config["architecture"] == arch and config["c_dim"] == c_dim
    assert config["conv_clamp"] == clamp and config["license"] == "CC BY-NC 4.0 (test)"
    assert config["source"]["file"] == pkl.name and config["source"]["network"] == "G_ema"
    assert config["source"]["sha256"] == __import__("hashlib").sha256(pkl.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    G = load_model(out)
    seeds, psi = [0, 1, 2, 3, 4], 0.7
    z = torch.from_numpy(seeds_to_z(seeds, 16))
    c = F.one_hot(torch.tensor(seeds) % max(c_dim, 1), max(c_dim, 1)).float()[:, :c_dim] if c_dim else None
    with torch.no_grad():
        ref = ref_G(z, c if c is not None else torch.zeros(5, 0), psi)
        got = G.synthesis(truncation(G.mapping(z, c), G.w_avg, psi))
    assert ref.shape == got.shape == (5, 3, res, res)
    assert 0.05 < ref.std() < 2  # not all clipped
    assert (got - ref).abs().max() <= 1e-4
    assert (to_uint8(got) == to_uint8(ref)).float().mean() >= 0.999
    if not c_dim:  # the whole serving path (seeds -> uint8), batch invariant
        u8 = run_eager(G, prepare_batch(make_specs(G.config, seeds, psi=psi), G.config, G.noise_resolutions()))
        assert (u8 == to_uint8(ref)).float().mean() >= 0.999


def test_import_of_G_and_info_and_generate(tmp_path):
    pkl = tmp_path / "snap.pkl"
    write_nvlabs_pickle(pkl, img_resolution=8)
    out = tmp_path / "m"
    assert ganserve("import", str(pkl), "--out", str(out), "--network", "G").returncode == 0
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["network"] == "G" and config["license"] == "the weights keep the licence of their source"
    info = ganserve("info", str(out))
    assert info.returncode == 0 and "stylegan2" in info.stdout and "sha256=" in info.stdout
    r = ganserve("generate", "--model", str(out), "--seeds", "0-3", "--backend", "torch", "--device", "cpu",
                 "--outdir", str(tmp_path / "imgs"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 4
    again = ganserve("import", str(pkl), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


# -- files that are refused -------------------------------------------------------------------------------------
class Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _hostile(kind: str, marker: Path, tmp_path: Path) -> tuple[bytes, str]:
    """(file bytes, the text the refusal must name)."""
    touch = f"touch {marker}"
    if kind == "os.system":
        return pickle.dumps({"G_ema": Reduce(os.system, touch)}), "posix.system"
    if kind == "eval":
        return pickle.dumps({"G_ema": Reduce(eval, f"__import__('os').system({touch!r})")}), "builtins.eval"
    if kind == "subprocess":
        return pickle.dumps({"G": Reduce(subprocess.Popen, ["touch", str(marker)])}), "subprocess.Popen"
    if kind == "nested":  # a valid network with a payload deep inside a layer's state
        pkl = tmp_path / "valid.pkl"
        with fake_nvlabs_modules():
            G = Generator(img_resolution=8)
            G.synthesis.b8.conv1.payload = Reduce(os.system, touch)
            data = pickle.dumps({"G_ema": G})
        return data, "posix.system"
    if kind == "truncated":
        pkl = tmp_path / "valid.pkl"
        write_nvlabs_pickle(pkl, img_resolution=8)
        data = pkl.read_bytes()
        return data[: len(data) // 2], "not a complete pickle"
    if kind == "random":
        return np.random.default_rng(0).bytes(4096), "not a pickle"
    if kind == "other dict":
        return pickle.dumps({"state_dict": {"w": [1.0, 2.0]}, "epoch": 3}), "no G_ema or G"
    if kind == "other network":
        with fake_nvlabs_modules():
            data = pickle.dumps({"G_ema": FullyConnectedLayer(4, 4)})
        return data, "FullyConnectedLayer, expected Generator"
    if kind == "relu":
        with fake_nvlabs_modules():
            G = Generator(img_resolution=8)
            G.synthesis.b8.conv0.activation = "relu"
            data = pickle.dumps({"G_ema": G})
        return data, "activation 'relu'"
    if kind == "malformed":  # readable, allowed types, nonsense values
        with fake_nvlabs_modules():
            G = Generator(img_resolution=8)
            G.synthesis.b8.conv1.use_noise = torch.ones(2)
            data = pickle.dumps({"G_ema": G})
        return data, "malformed"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["os.system", "eval", "subprocess", "nested", "truncated", "random", "other dict",
                                  "other network", "relu", "malformed"])
def test_hostile_or_foreign_files_are_refused_with_one_line_and_nothing_written(tmp_path, kind):
    marker = tmp_path / "pwned"
    data, named = _hostile(kind, marker, tmp_path)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(data)
    root = tmp_path / "outroot"
    root.mkdir()
    r = ganserve("import", str(pkl), "--out", str(root / "m"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], r.stderr
    assert lines[0].startswith("ganserve import: error: evil.pkl:")
    assert not marker.exists()
    assert list(root.iterdir()) == []  # no model directory, no temporary folder left behind
    assert "embedded source ran" not in r.stdout + r.stderr


# -- rosinality stylegan2-pytorch checkpoints -------------------------------------------------------------------
def rosinality_state_dict(G: Generator) -> dict[str, torch.Tensor]:
    """The tiny NVlabs-layout generator above, renamed and reshaped into rosinality's Generator state dict."""
    sd: dict[str, torch.Tensor] = {}
    for k in range(G.mapping.num_layers):
        fc = getattr(G.mapping, f"fc{k}")
        sd[f"style.{k + 1}.weight"], sd[f"style.{k + 1}.bias"] = fc.weight.clone(), fc.bias.clone()
    sd["input.input"] = G.synthesis.b4.const[None].clone()
    noise_idx = 0

    def styled(src: str, layer: SynthesisLayer, up: bool) -> None:
        nonlocal noise_idx
        fan_in = layer.weight.shape[1] * 9
        sd[f"{src}.conv.weight"] = layer.weight[None] * math.sqrt(fan_in)  # rosinality scales by 1/sqrt(fan_in)
        sd[f"{src}.conv.modulation.weight"] = layer.affine.weight.clone()
        sd[f"{src}.conv.modulation.bias"] = layer.affine.bias.clone()
        if up:
            sd[f"{src}.conv.blur.kernel"] = layer.resample_filter * 4
        sd[f"{src}.noise.weight"] = layer.noise_strength.reshape(1).clone()
        sd[f"{src}.activate.bias"] = layer.bias.clone()
        sd[f"noises.noise_{noise_idx}"] = layer.noise_const[None, None].clone()
        noise_idx += 1

    def rgb(src: str, t: ToRGBLayer, up: bool) -> None:
        sd[f"{src}.conv.weight"] = t.weight[None].clone()
        sd[f"{src}.conv.modulation.weight"], sd[f"{src}.conv.modulation.bias"] = t.affine.weight, t.affine.bias
        sd[f"{src}.bias"] = t.bias.reshape(1, -1, 1, 1).clone()
        if up:
            sd[f"{src}.upsample.kernel"] = setup_filter([1, 3, 3, 1]) * 4

    styled("conv1", G.synthesis.b4.conv1, False)
    rgb("to_rgb1", G.synthesis.b4.torgb, False)
    for j, res in enumerate(G.synthesis.block_resolutions[1:]):
        block = getattr(G.synthesis, f"b{res}")
        styled(f"convs.{2 * j}", block.conv0, True)
        styled(f"convs.{2 * j + 1}", block.conv1, False)
        rgb(f"to_rgbs.{j}", block.torgb, True)
    return {k: v.detach().clone() for k, v in sd.items()}


@pytest.mark.parametrize("layout", ["converted", "trained"])
def test_imported_rosinality_checkpoint_gives_the_reference_images(tmp_path, layout):
    with fake_nvlabs_modules():
        torch.manual_seed(1)
        ref_G = Generator(img_resolution=16, conv_clamp=None).eval().requires_grad_(False)
    sd = rosinality_state_dict(ref_G)
    if layout == "converted":  # convert_weight.py
        ckpt = {"g_ema": sd, "latent_avg": ref_G.mapping.w_avg.clone()}
    else:  # train.py: arguments as a Namespace, no latent_avg
        import argparse

        ckpt = {"g": sd, "d": {}, "g_ema": sd, "g_optim": {}, "d_optim": {}, "ada_aug_p": 0.0,
                "args": argparse.Namespace(size=16, latent=16, n_mlp=2, channel_multiplier=2)}
    pt = tmp_path / "000100.pt"
    torch.save(ckpt, pt)
    out = tmp_path / "m"
    r = ganserve("import", str(pt), "--out", str(out))
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["format"] == "rosinality-stylegan2-pytorch" and config["source"]["network"] == "g_ema"
    assert config["conv_clamp"] is None and config["mapping_lr_mul"] == 0.01
    G = load_model(out)
    if layout == "trained":
        assert "estimated" in config["source"]["w_avg"]
        with torch.no_grad():
            ref_G.mapping.w_avg.copy_(G.w_avg)  # the reference truncates towards the same centre
    z = torch.from_numpy(seeds_to_z([0, 1, 2, 3], 16))
    with torch.no_grad():
        ref = ref_G(z, torch.zeros(4, 0), 0.7)
        got = G.synthesis(truncation(G.mapping(z), G.w_avg, 0.7))
    assert 0.05 < ref.std() < 2
    assert (got - ref).abs().max() <= 1e-4
    assert (to_uint8(got) == to_uint8(ref)).float().mean() >= 0.999


@pytest.mark.parametrize("kind", ["os.system in a torch.save file", "swagan-like extra tensors", "no g_ema"])
def test_hostile_or_foreign_torch_save_files_are_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    with fake_nvlabs_modules():
        torch.manual_seed(1)
        sd = rosinality_state_dict(Generator(img_resolution=8, conv_clamp=None))
    if kind.startswith("os.system"):
        ckpt, named = {"g_ema": sd, "args": Reduce(os.system, f"touch {marker}")}, "refusing to load posix.system"
    elif kind.startswith("swagan"):
        ckpt, named = {"g_ema": {**sd, "to_rgbs.0.iwt.ll": torch.zeros(1)}}, "to_rgbs.0.iwt.ll"
    else:
        ckpt, named = {"model": sd}, "no g_ema or g"
    pt = tmp_path / "evil.pt"
    torch.save(ckpt, pt)
    root = tmp_path / "outroot"
    root.mkdir()
    r = ganserve("import", str(pt), "--out", str(root / "m"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and named in lines[0], r.stderr
    assert not marker.exists() and list(root.iterdir()) == []


def test_restricted_unpickler_reads_numeric_numpy_and_refuses_the_rest_by_name():
    from ganserve.models.importers.safe_pickle import UnsafePickleError, restricted_load

    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3).T, "gain": np.float64(0.25), "s": {1, 2}}
    for protocol in (2, 4):
        got = restricted_load(pickle.dumps(data, protocol=protocol))
        assert np.array_equal(got["a"], data["a"]) and got["a"].dtype == np.float32
        assert got["gain"] == 0.25 and got["s"] == {1, 2}
    with pytest.raises(UnsafePickleError, match=r"numpy.dtype\('O8'\)"):
        restricted_load(pickle.dumps(np.array([print], dtype=object)))
    with pytest.raises(UnsafePickleError, match="refusing to load builtins.print"):
        restricted_load(pickle.dumps({"f": print}))
    with pytest.raises(UnsafePickleError, match="refusing to load collections.Counter"):
        restricted_load(pickle.dumps(__import__("collections").Counter("ab")))
