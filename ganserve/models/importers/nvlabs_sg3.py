"""NVlabs stylegan3 network pickles (networks_stylegan3: configs T and R) -> a ganserve stylegan3 ModelConfig and
state dict.

Owns reading SynthesisInput and the SynthesisLayers: every constant (channels, sizes, sampling rates, cutoffs,
half-widths, filter taps, up/down factors, padding, conv_clamp, output_scale) is the layer's stored attribute, checked
for consistency (sizes chain, filters match their taps, the padding gives the stored output size); nothing is
recomputed from a version's defaults. The filters themselves are the stored buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ganserve.errors import ImportRefused
from ganserve.models.config import ModelConfig
from ganserve.models.importers.nvlabs import (
    _clamp,
    _Collector,
    _fc,
    _int,
    _module,
    _num,
    _state_dict,
    _tensor,
    read_header,
)
from ganserve.models.importers.safe_pickle import PersistentObject


def _size(value: Any, where: str) -> int:
    """NVlabs keeps sizes as numpy [width, height]; ganserve supports square ones."""
    arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else np.asarray([value, value])
    if arr.shape != (2,) or arr.dtype.kind not in "iu" or arr[0] != arr[1] or arr[0] < 1:
        raise ImportRefused(f"{where} is {value!r}; ganserve supports square sizes")
    return int(arr[0])


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ImportRefused(f"{where} is {value!r}, not a boolean")
    return bool(value)


def _filter(layer: PersistentObject, name: str, taps: int, radial: bool, where: str) -> None:
    """The stored filter buffer agrees with its tap count: none for 1 tap, [taps] or, radial, [taps, taps]."""
    f = layer.tensors().get(name)
    if taps == 1:
        if f is not None:
            raise ImportRefused(f"{where}.{name} is stored but the layer has 1 tap")
        return
    shape = (taps, taps) if radial else (taps,)
    if not isinstance(f, torch.Tensor) or tuple(f.shape) != shape:
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else None
        raise ImportRefused(f"{where}.{name} has shape {got}, expected {shape}")


def _layer(layer: Any, where: str, w_dim: int, same: _Collector) -> dict[str, Any]:
    layer = _module(layer, "SynthesisLayer", where)
    a = layer.attr
    spec: dict[str, Any] = dict(
        in_channels=_int(a("in_channels"), f"{where}.in_channels"),
        out_channels=_int(a("out_channels"), f"{where}.out_channels"),
        in_size=_size(a("in_size"), f"{where}.in_size"), out_size=_size(a("out_size"), f"{where}.out_size"),
        in_sampling_rate=_num(a("in_sampling_rate"), f"{where}.in_sampling_rate"),
        out_sampling_rate=_num(a("out_sampling_rate"), f"{where}.out_sampling_rate"),
        in_cutoff=_num(a("in_cutoff"), f"{where}.in_cutoff"), out_cutoff=_num(a("out_cutoff"), f"{where}.out_cutoff"),
        in_half_width=_num(a("in_half_width"), f"{where}.in_half_width"),
        out_half_width=_num(a("out_half_width"), f"{where}.out_half_width"),
        is_torgb=_flag(a("is_torgb"), f"{where}.is_torgb"),
        is_critically_sampled=_flag(a("is_critically_sampled"), f"{where}.is_critically_sampled"),
        use_fp16=_flag(a("use_fp16"), f"{where}.use_fp16"),
        conv_kernel=_int(a("conv_kernel"), f"{where}.conv_kernel"),
        up_factor=_int(a("up_factor"), f"{where}.up_factor"),
        down_factor=_int(a("down_factor"), f"{where}.down_factor"),
        up_taps=_int(a("up_taps"), f"{where}.up_taps"), down_taps=_int(a("down_taps"), f"{where}.down_taps"),
        down_radial=_flag(a("down_radial"), f"{where}.down_radial"),
    )
    for key in ("in_sampling_rate", "out_sampling_rate"):  # whole numbers in NVlabs' layers; keep them as ints
        if spec[key] != int(spec[key]):
            raise ImportRefused(f"{where}.{key} is {spec[key]!r}, not a whole number")
        spec[key] = int(spec[key])
    padding = a("padding")
    if not isinstance(padding, (list, tuple)) or len(padding) != 4:
        raise ImportRefused(f"{where}.padding is {padding!r}, expected [x0, x1, y0, y1]")
    spec["padding"] = [_int(p, f"{where}.padding") for p in padding]
    if min(spec[k] for k in ("up_factor", "down_factor", "up_taps", "down_taps", "conv_kernel")) < 1:
        raise ImportRefused(f"{where} has a factor, tap count or kernel below 1")
    tmp_rate = _num(a("tmp_sampling_rate"), f"{where}.tmp_sampling_rate")
    if (spec["in_sampling_rate"] * spec["up_factor"] != tmp_rate
            or spec["out_sampling_rate"] * spec["down_factor"] != tmp_rate):
        raise ImportRefused(f"{where}: up/down factors {spec['up_factor']}/{spec['down_factor']} do not take the "
                            f"sampling rates {spec['in_sampling_rate']}/{spec['out_sampling_rate']} to {tmp_rate}")
    w = _tensor(layer, "weight", where, 4)
    k = spec["conv_kernel"]
    if tuple(w.shape) != (spec["out_channels"], spec["in_channels"], k, k):
        raise ImportRefused(f"{where}.weight has shape {tuple(w.shape)}, expected "
                            f"{(spec['out_channels'], spec['in_channels'], k, k)}")
    if tuple(_tensor(layer, "bias", where, 1).shape) != (spec["out_channels"],):
        raise ImportRefused(f"{where}.bias does not have {spec['out_channels']} entries")
    if _tensor(layer, "magnitude_ema", where).numel() != 1:
        raise ImportRefused(f"{where}.magnitude_ema is not a scalar")
    a_in, a_out, a_lr = _fc(layer.child("affine"), f"{where}.affine", "linear")
    if (a_in, a_out) != (w_dim, spec["in_channels"]) or a_lr != 1:
        raise ImportRefused(f"{where}.affine does not map w ({w_dim}) to {spec['in_channels']} styles")
    _filter(layer, "up_filter", spec["up_taps"], False, where)
    _filter(layer, "down_filter", spec["down_taps"], spec["down_radial"], where)
    # The filtered leaky ReLU's output size with the stored padding must be the stored output size.
    x0, x1, y0, y1 = spec["padding"]
    conv_out = spec["in_size"] + k - 1
    for p0, p1 in ((x0, x1), (y0, y1)):
        size = (conv_out * spec["up_factor"] + p0 + p1 - (spec["up_taps"] - 1) - (spec["down_taps"] - 1)
                + spec["down_factor"] - 1) // spec["down_factor"]
        if size != spec["out_size"]:
            raise ImportRefused(f"{where}: padding {spec['padding']} gives {size}px, the layer says "
                                f"{spec['out_size']}px")
    same.put("conv_clamp", _clamp(a("conv_clamp"), where), where)
    return spec


def read_stylegan3(G: PersistentObject, network: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The ganserve config and state dict of an NVlabs stylegan3 Generator (networks_stylegan3) persistent object."""
    (z_dim, c_dim, w_dim, resolution, img_channels, num_ws, num_layers, lr_mul, layer_features,
     embed_features) = read_header(G, network)
    synthesis = _module(G.child("synthesis"), "SynthesisNetwork", f"{network}.synthesis")
    if layer_features not in (0, w_dim) or embed_features not in (0, w_dim):
        raise ImportRefused(f"{network}.mapping has hidden or embedding widths other than w_dim {w_dim}")

    where = f"{network}.synthesis"
    if (synthesis.attr("img_resolution"), synthesis.attr("num_ws"), synthesis.attr("w_dim")) != \
            (resolution, num_ws, w_dim) or synthesis.attr("img_channels") != img_channels:
        raise ImportRefused(f"{where} disagrees with the generator on resolution, num_ws, w_dim or img_channels")
    inp = _module(synthesis.child("input"), "SynthesisInput", f"{where}.input")
    channels = _int(inp.attr("channels"), f"{where}.input.channels")
    sg3_input = dict(channels=channels, size=_size(inp.attr("size"), f"{where}.input.size"),
                     sampling_rate=_num(inp.attr("sampling_rate"), f"{where}.input.sampling_rate"),
                     bandwidth=_num(inp.attr("bandwidth"), f"{where}.input.bandwidth"))
    if inp.attr("w_dim") != w_dim or not 0 < sg3_input["bandwidth"] < sg3_input["sampling_rate"] / 2:
        raise ImportRefused(f"{where}.input has w_dim {inp.attr('w_dim')!r} or a bandwidth outside the sampling rate")
    for name, shape in (("weight", (channels, channels)), ("transform", (3, 3)), ("freqs", (channels, 2)),
                        ("phases", (channels,))):
        if tuple(_tensor(inp, name, f"{where}.input").shape) != shape:
            raise ImportRefused(f"{where}.input.{name} does not have shape {shape}")
    if _fc(inp.child("affine"), f"{where}.input.affine", "linear")[:2] != (w_dim, 4):
        raise ImportRefused(f"{where}.input.affine does not map w to 4 transform parameters")

    names = synthesis.attr("layer_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ImportRefused(f"{where}.layer_names is {names!r}")
    if len(names) + 1 != num_ws:
        raise ImportRefused(f"{where} has {len(names)} layers for {num_ws} ws (NVlabs: num_layers + 2)")
    same = _Collector()
    layers = []
    for name in names:
        spec = _layer(synthesis.child(name), f"{where}.{name}", w_dim, same)
        spec["name"] = name
        layers.append(spec)
    output_scale = _num(synthesis.attr("output_scale"), f"{where}.output_scale")
    init = synthesis.attr("_init_kwargs") or {}
    base = {k: init[k] for k in ("channel_base", "channel_max") if isinstance(init.get(k), int) and init[k] > 0}
    radial = any(layer["down_radial"] for layer in layers)
    num_fp16_res = synthesis.attr("num_fp16_res")
    try:
        config = ModelConfig(
            arch="stylegan3", resolution=resolution, z_dim=z_dim, w_dim=w_dim, img_channels=img_channels,
            mapping_layers=num_layers, mapping_lr_mul=lr_mul, c_dim=c_dim, **base,
            conv_clamp=same.values.get("conv_clamp"), sg3_config="r" if radial else "t", sg3_input=sg3_input,
            sg3_layers=layers, output_scale=output_scale,
            num_fp16_res=num_fp16_res if isinstance(num_fp16_res, int) and num_fp16_res >= 0 else 0,
        )
    except ValueError as e:
        raise ImportRefused(f"'{network}' describes a StyleGAN3 ganserve cannot build ({e})") from None
    return config, _state_dict(G)
