"""rosinality stylegan2-pytorch checkpoints (torch.save of {'g_ema': state dict, 'latent_avg', ...}) -> a ganserve
stylegan2 ModelConfig and state dict.

Owns loading with torch.load(weights_only=True) and the key/shape mapping; the architecture is read from the
tensors' shapes. The one constant a state dict cannot carry, the mapping lr multiplier, is 0.01 (rosinality's only
value) unless the checkpoint's saved args say otherwise.
"""

from __future__ import annotations

import argparse
import io
import math
import re
from typing import Any

import torch

from ganserve.errors import ImportRefused
from ganserve.models.config import ModelConfig
from ganserve.models.stylegan2 import setup_filter

FORMAT = "rosinality-stylegan2-pytorch"
NETWORK_KEYS = ("g_ema", "g")
DEFAULT_LR_MLP = 0.01
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pickled magic number of torch.save's legacy format


def is_torch_save(data: bytes) -> bool:
    """A torch.save file: a zip archive, or the legacy format that starts with torch's magic number."""
    return data[:4] == b"PK\x03\x04" or data.startswith(_LEGACY_MAGIC)


def load_checkpoint(data: bytes) -> Any:
    """torch.load(weights_only=True): tensors and plain containers only (plus argparse.Namespace, as which
    rosinality's train.py saves its arguments). A refused global becomes one line naming it."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only failures are UnpicklingError; damaged archives raise many other types
        text = str(e)
        if m := re.search(r"GLOBAL ([\w.]+)", text):  # "Unsupported global: GLOBAL x.y" / "unsupported GLOBAL x.y"
            raise ImportRefused(f"refusing to load {m.group(1)}: torch.load(weights_only=True) allows only tensors "
                                "and plain containers") from None
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        raise ImportRefused(f"not a readable torch.save file ({type(e).__name__}: {first})") from None


def find_network(ckpt: Any, network: str | None) -> tuple[str, dict[str, torch.Tensor]]:
    if not isinstance(ckpt, dict):
        raise ImportRefused(f"not a rosinality checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    keys = [str(k) for k in ckpt]
    candidates = [network.lower()] if network else list(NETWORK_KEYS)
    for key in candidates:
        if key in ckpt:
            sd = ckpt[key]
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise ImportRefused(f"'{key}' is not a state dict of tensors")
            return key, sd
    raise ImportRefused(f"not a rosinality StyleGAN2 checkpoint: no {' or '.join(candidates)} "
                        f"(keys: {', '.join(keys[:8]) or 'none'})")


def _get(sd: dict[str, torch.Tensor], key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    t = sd.get(key)
    if t is None:
        raise ImportRefused(f"no tensor {key!r}: not a rosinality StyleGAN2 generator")
    if shape is not None and tuple(t.shape) != shape:
        raise ImportRefused(f"{key} has shape {tuple(t.shape)}, expected {shape}")
    return t.detach().to(torch.float32)


def _lr_mlp(ckpt: dict) -> float:
    args = ckpt.get("args")
    value = getattr(args, "lr_mlp", None) if isinstance(args, argparse.Namespace) else None
    if isinstance(args, dict):
        value = args.get("lr_mlp")
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_LR_MLP


def read_generator(ckpt: dict, network: str | None) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, ganserve state dict, notes for config.source) of the generator in a rosinality checkpoint."""
    name, sd = find_network(ckpt, network)
    used: set[str] = set()

    def get(key, shape=None):
        used.add(key)
        return _get(sd, key, shape)

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        raise ImportRefused(f"'{name}' has no mapping layers (style.1.weight): not a rosinality StyleGAN2 generator")
    w_dim = sd["style.1.weight"].shape[0]
    num_convs = 0
    while f"convs.{num_convs}.conv.weight" in sd:
        num_convs += 1
    if num_convs % 2:
        raise ImportRefused(f"'{name}' has an odd number of convs ({num_convs})")
    log_size = num_convs // 2 + 2
    resolution = 2**log_size
    const = get("input.input")
    if const.ndim != 4 or tuple(const.shape[2:]) != (4, 4):
        raise ImportRefused(f"input.input has shape {tuple(const.shape)}, expected [1, C, 4, 4]")
    img_channels = sd["to_rgb1.conv.weight"].shape[1] if "to_rgb1.conv.weight" in sd else 3

    out: dict[str, torch.Tensor] = {}
    for k in range(n_mlp):
        out[f"mapping_net.fc{k}.weight"] = get(f"style.{k + 1}.weight", (w_dim, w_dim))
        out[f"mapping_net.fc{k}.bias"] = get(f"style.{k + 1}.bias", (w_dim,))
    lr_mlp = _lr_mlp(ckpt)
    notes: dict[str, Any] = {"mapping_lr_mul": f"{lr_mlp:g} (not stored in a state dict; rosinality's value)"}
    if "latent_avg" in ckpt and isinstance(ckpt["latent_avg"], torch.Tensor):
        out["w_avg"] = ckpt["latent_avg"].detach().to(torch.float32).reshape(-1)
        if out["w_avg"].shape != (w_dim,):
            raise ImportRefused(f"latent_avg has shape {tuple(ckpt['latent_avg'].shape)}, expected ({w_dim},)")
    out["synthesis_net.b4.const"] = const[0]
    channels = {"4": const.shape[1]}
    taps: list[list[float]] = []

    def styled_conv(src: str, dst: str, in_ch: int, res: int, noise: str, up: bool) -> int:
        w = get(f"{src}.conv.weight")
        if w.ndim != 5 or w.shape[0] != 1 or w.shape[2] != in_ch or tuple(w.shape[3:]) != (3, 3):
            raise ImportRefused(f"{src}.conv.weight has shape {tuple(w.shape)}, expected [1, O, {in_ch}, 3, 3]")
        o = w.shape[1]
        out[f"{dst}.weight"] = w[0] / math.sqrt(in_ch * 9)  # rosinality scales before demodulating; fold it in
        out[f"{dst}.affine.weight"] = get(f"{src}.conv.modulation.weight", (in_ch, w_dim))
        out[f"{dst}.affine.bias"] = get(f"{src}.conv.modulation.bias", (in_ch,))
        out[f"{dst}.noise_strength"] = get(f"{src}.noise.weight", (1,)).reshape([])
        out[f"{dst}.bias"] = get(f"{src}.activate.bias", (o,))
        out[f"{dst}.noise_const"] = get(noise, (1, 1, res, res))[0, 0]
        if up:
            taps.append(_taps(get(f"{src}.conv.blur.kernel"), f"{src}.conv.blur.kernel"))
        return o

    def to_rgb(src: str, dst: str, in_ch: int, up: bool) -> None:
        out[f"{dst}.weight"] = get(f"{src}.conv.weight", (1, img_channels, in_ch, 1, 1))[0]
        out[f"{dst}.affine.weight"] = get(f"{src}.conv.modulation.weight", (in_ch, w_dim))
        out[f"{dst}.affine.bias"] = get(f"{src}.conv.modulation.bias", (in_ch,))
        out[f"{dst}.bias"] = get(f"{src}.bias", (1, img_channels, 1, 1)).reshape(-1)
        if up:
            taps.append(_taps(get(f"{src}.upsample.kernel"), f"{src}.upsample.kernel"))

    c = styled_conv("conv1", "synthesis_net.b4.conv1", channels["4"], 4, "noises.noise_0", False)
    if c != channels["4"]:
        raise ImportRefused(f"conv1 gives {c} channels, the constant input has {channels['4']}")
    to_rgb("to_rgb1", "synthesis_net.b4.torgb", c, False)
    for j in range(num_convs // 2):
        res = 2 ** (j + 3)
        b = f"synthesis_net.b{res}"
        o = styled_conv(f"convs.{2 * j}", f"{b}.conv0", c, res, f"noises.noise_{2 * j + 1}", True)
        o1 = styled_conv(f"convs.{2 * j + 1}", f"{b}.conv1", o, res, f"noises.noise_{2 * j + 2}", False)
        if o1 != o:
            raise ImportRefused(f"convs.{2 * j + 1} changes the channel count ({o} -> {o1})")
        to_rgb(f"to_rgbs.{j}", f"{b}.torgb", o, True)
        channels[str(res)] = c = o
    unused = sorted(set(sd) - used)
    if unused:
        raise ImportRefused(f"'{name}' has tensors a rosinality StyleGAN2 generator does not "
                            f"({', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}); SWAGAN or another model?")
    if any(t != taps[0] for t in taps):
        raise ImportRefused("the blur kernels differ between layers; ganserve takes one resample filter")
    resample = taps[0] if taps else [1.0, 3.0, 3.0, 1.0]
    config = ModelConfig(
        arch="stylegan2", resolution=resolution, z_dim=w_dim, w_dim=w_dim, img_channels=img_channels,
        mapping_layers=n_mlp, mapping_lr_mul=lr_mlp, channels_per_resolution=channels, conv_clamp=None,
        architecture="skip", resample_filter=resample,
    )
    f = setup_filter(resample)
    for key in [f"synthesis_net.b{r}.resample_filter" for r in (2**i for i in range(2, log_size + 1))] + [
            f"synthesis_net.b{r}.conv{k}.resample_filter" for r in (2**i for i in range(2, log_size + 1))
            for k in (0, 1) if not (r == 4 and k == 0)]:
        out[key] = f.clone()
    return config, out, {"network": name, "assumed": notes}


def _taps(kernel: torch.Tensor, where: str) -> list[float]:
    """The normalised separable taps of a rosinality blur kernel (make_kernel(k) * 4)."""
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ImportRefused(f"{where} has shape {tuple(kernel.shape)}")
    k = kernel.double()
    taps = k.sum(dim=0)
    if not torch.allclose(torch.outer(taps, taps) / taps.sum() ** 2, k / k.sum(), atol=1e-7):
        raise ImportRefused(f"{where} is not separable")
    return [round(float(t), 9) for t in taps / taps.sum()]
