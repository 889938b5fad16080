"""NVlabs stylegan2-ada-pytorch network pickles -> a ganserve stylegan2 ModelConfig and state dict.

Owns reading the persistent-object tree (Generator > MappingNetwork/SynthesisNetwork > blocks > layers): every
constant comes from the layers' stored attributes and tensors, checked against what ganserve's StyleGAN2 computes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ganserve.errors import ImportRefused
from ganserve.models.config import SG2_ARCHITECTURES, ModelConfig
from ganserve.models.importers.safe_pickle import PersistentObject

FORMAT = "nvlabs-stylegan2-ada-pytorch"
NETWORK_KEYS = ("G_ema", "G")


def _num(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ImportRefused(f"{what} is {value!r}, not a number")
    return float(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ImportRefused(f"{what} is {value!r}, not an integer")
    return int(value)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-12)


def _module(obj: Any, class_name: str, where: str) -> PersistentObject:
    if not isinstance(obj, PersistentObject):
        raise ImportRefused(f"{where} is a {type(obj).__name__}, not an NVlabs {class_name}")
    if obj.class_name != class_name:
        raise ImportRefused(f"{where} is an NVlabs {obj.class_name}, expected {class_name}")
    return obj


def _tensor(module: PersistentObject, name: str, where: str, ndim: int | None = None) -> torch.Tensor:
    t = module.tensors().get(name)
    if not isinstance(t, torch.Tensor):
        raise ImportRefused(f"{where} has no tensor {name!r}")
    if ndim is not None and t.ndim != ndim:
        raise ImportRefused(f"{where}.{name} has shape {tuple(t.shape)}, expected {ndim} dimensions")
    return t


def _fc(fc: Any, where: str, activation: str) -> tuple[int, int, float]:
    """A FullyConnectedLayer: (in, out, lr multiplier), after checking its activation and gains."""
    fc = _module(fc, "FullyConnectedLayer", where)
    w = _tensor(fc, "weight", where, 2)
    if fc.attr("activation") != activation:
        raise ImportRefused(f"{where} has activation {fc.attr('activation')!r}; ganserve supports {activation!r} here")
    if "bias" not in fc.tensors():
        raise ImportRefused(f"{where} has no bias; ganserve's StyleGAN2 needs one")
    out_f, in_f = w.shape
    lr_mul = _num(fc.attr("bias_gain"), f"{where}.bias_gain")
    if not _close(_num(fc.attr("weight_gain"), f"{where}.weight_gain"), lr_mul / math.sqrt(in_f)):
        raise ImportRefused(f"{where}.weight_gain is not lr_multiplier/sqrt(in_features)")
    return in_f, out_f, lr_mul


def _filter_taps(f: torch.Tensor, where: str) -> list[float]:
    """The separable taps of a stored resample filter (setup_filter's output: 2D outer product or 1D taps)."""
    if f.ndim == 1:
        taps = f.double()
    elif f.ndim == 2 and f.shape[0] == f.shape[1]:
        taps = f.double().sum(dim=0)
        if not torch.allclose(torch.outer(taps, taps) / taps.sum() ** 2, f.double() / f.double().sum(), atol=1e-7):
            raise ImportRefused(f"{where}.resample_filter is not separable; ganserve supports separable filters")
    else:
        raise ImportRefused(f"{where}.resample_filter has shape {tuple(f.shape)}")
    taps = taps / taps.sum()
    return [round(float(t), 9) for t in taps]


class _Collector:
    """Values that every layer must agree on (conv_clamp, architecture, filters...): first seen wins, a different
    later one refuses the import."""

    def __init__(self):
        self.values: dict[str, Any] = {}

    def put(self, key: str, value: Any, where: str) -> None:
        if key in self.values and self.values[key] != value:
            raise ImportRefused(f"{where}: {key} {value!r} differs from {self.values[key]!r} elsewhere; "
                                "ganserve's StyleGAN2 takes one value for the whole network")
        self.values.setdefault(key, value)


def _clamp(value: Any, where: str) -> float | None:
    return None if value is None else _num(value, f"{where}.conv_clamp")


def _synthesis_layer(layer: Any, where: str, up: int, same: _Collector) -> tuple[int, int, int]:
    layer = _module(layer, "SynthesisLayer", where)
    w = _tensor(layer, "weight", where, 4)
    if tuple(w.shape[2:]) != (3, 3) or layer.attr("padding") != 1:
        raise ImportRefused(f"{where} has a {tuple(w.shape[2:])} kernel; ganserve's StyleGAN2 uses 3x3")
    if _int(layer.attr("up"), f"{where}.up") != up:
        raise ImportRefused(f"{where}.up is {layer.attr('up')!r}, expected {up}")
    if layer.attr("activation") != "lrelu" or not _close(_num(layer.attr("act_gain"), f"{where}.act_gain"),
                                                          math.sqrt(2)):
        raise ImportRefused(f"{where} has activation {layer.attr('activation')!r}; ganserve supports 'lrelu'")
    same.put("conv_clamp", _clamp(layer.attr("conv_clamp"), where), where)
    use_noise = bool(layer.attr("use_noise"))
    same.put("use_noise", use_noise, where)
    if use_noise:
        _tensor(layer, "noise_const", where, 2)
    same.put("resample_filter", _filter_taps(_tensor(layer, "resample_filter", where), where), where)
    return w.shape[1], w.shape[0], _int(layer.attr("resolution"), f"{where}.resolution")


def read_mapping(mapping: PersistentObject, where: str, z_dim: int, c_dim: int,
                 w_dim: int) -> tuple[int, float, int, int]:
    """A MappingNetwork (StyleGAN2 or 3): (num_layers, lr multiplier, hidden width, class embedding width)."""
    num_layers = _int(mapping.attr("num_layers"), f"{where}.num_layers")
    for k, v in (("z_dim", z_dim), ("c_dim", c_dim), ("w_dim", w_dim)):
        if mapping.attr(k) != v:
            raise ImportRefused(f"{where}.{k} is {mapping.attr(k)!r}, the generator says {v}")
    if num_layers < 1:
        raise ImportRefused(f"{where} has {num_layers} layers")
    fcs = [_fc(mapping.child(f"fc{i}"), f"{where}.fc{i}", "lrelu") for i in range(num_layers)]
    lr_mul = fcs[0][2]
    if any(not _close(f[2], lr_mul) for f in fcs):
        raise ImportRefused(f"{where}: the fc layers have different lr multipliers")
    embed_features = 0
    if c_dim > 0:
        e_in, embed_features, e_lr = _fc(mapping.child("embed"), f"{where}.embed", "linear")
        if e_in != c_dim or not _close(e_lr, 1.0):
            raise ImportRefused(f"{where}.embed does not take the {c_dim} class labels at lr multiplier 1")
    elif mapping.child("embed") is not None:
        raise ImportRefused(f"{where} has a class embedding but c_dim is 0")
    if fcs[0][0] != z_dim + embed_features or fcs[-1][1] != w_dim:
        raise ImportRefused(f"{where}: fc0 takes {fcs[0][0]} features, fc{num_layers - 1} gives {fcs[-1][1]}; "
                            f"expected {z_dim + embed_features} in and {w_dim} out")
    hidden = {f[1] for f in fcs[:-1]}
    if len(hidden) > 1:
        raise ImportRefused(f"{where}: hidden layers of different widths {sorted(hidden)}")
    return num_layers, lr_mul, hidden.pop() if hidden else 0, embed_features


def read_header(G: PersistentObject, network: str) -> tuple[int, ...]:
    """What every NVlabs Generator states and its MappingNetwork must agree with: (z_dim, c_dim, w_dim,
    img_resolution, img_channels, num_ws, mapping layers, lr multiplier, hidden width, class embedding width)."""
    mapping = _module(G.child("mapping"), "MappingNetwork", f"{network}.mapping")
    z_dim, c_dim, w_dim = (_int(G.attr(k), f"{network}.{k}") for k in ("z_dim", "c_dim", "w_dim"))
    resolution = _int(G.attr("img_resolution"), f"{network}.img_resolution")
    img_channels = _int(G.attr("img_channels"), f"{network}.img_channels")
    num_ws = _int(G.attr("num_ws"), f"{network}.num_ws")
    return (z_dim, c_dim, w_dim, resolution, img_channels, num_ws,
            *read_mapping(mapping, f"{network}.mapping", z_dim, c_dim, w_dim))


def read_generator(G: Any, network: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The ganserve config and state dict of an NVlabs StyleGAN2 Generator persistent object."""
    G = _module(G, "Generator", f"'{network}'")
    synthesis = G.child("synthesis")
    if isinstance(synthesis, PersistentObject) and synthesis.child("input") is not None:
        from ganserve.models.importers.nvlabs_sg3 import read_stylegan3

        return read_stylegan3(G, network)
    synthesis = _module(synthesis, "SynthesisNetwork", f"{network}.synthesis")

    (z_dim, c_dim, w_dim, resolution, img_channels, num_ws, num_layers, lr_mul, layer_features,
     embed_features) = read_header(G, network)

    # -- synthesis --------------------------------------------------------------------------------------------
    where = f"{network}.synthesis"
    if synthesis.attr("img_resolution") != resolution or synthesis.attr("num_ws") != num_ws:
        raise ImportRefused(f"{where} disagrees with the generator on resolution or num_ws")
    expected_res = [2**i for i in range(2, int(math.log2(resolution)) + 1)] if resolution >= 4 else []
    if 2 ** int(math.log2(max(resolution, 1))) != resolution or list(synthesis.attr("block_resolutions") or []) \
            != expected_res:
        raise ImportRefused(f"{where} has blocks {synthesis.attr('block_resolutions')!r} for resolution {resolution}")
    same = _Collector()
    channels: dict[str, int] = {}
    fp16_blocks = 0
    for res in expected_res:
        bw = f"{where}.b{res}"
        block = _module(synthesis.child(f"b{res}"), "SynthesisBlock", bw)
        arch = block.attr("architecture")
        if arch not in SG2_ARCHITECTURES:
            raise ImportRefused(f"{bw}.architecture is {arch!r}; ganserve supports {', '.join(SG2_ARCHITECTURES)}")
        same.put("architecture", arch, bw)
        same.put("resample_filter", _filter_taps(_tensor(block, "resample_filter", bw), bw), bw)
        if block.attr("resolution") != res or block.attr("img_channels") != img_channels or \
                block.attr("w_dim") != w_dim or bool(block.attr("is_last")) != (res == resolution):
            raise ImportRefused(f"{bw}: stored resolution/img_channels/w_dim/is_last disagree with the network")
        fp16_blocks += bool(block.attr("use_fp16"))
        in_channels = _int(block.attr("in_channels"), f"{bw}.in_channels")
        if res == 4:
            if in_channels != 0:
                raise ImportRefused(f"{bw} is the first block but takes {in_channels} channels")
            const = _tensor(block, "const", bw, 3)
            if tuple(const.shape[1:]) != (4, 4):
                raise ImportRefused(f"{bw}.const has shape {tuple(const.shape)}")
        else:
            if in_channels != channels[str(res // 2)]:
                raise ImportRefused(f"{bw} takes {in_channels} channels, b{res // 2} gives {channels[str(res // 2)]}")
            i0, o0, r0 = _synthesis_layer(block.child("conv0"), f"{bw}.conv0", 2, same)
            if (i0, r0) != (in_channels, res):
                raise ImportRefused(f"{bw}.conv0 does not map {in_channels} channels to {res}x{res}")
        i1, o1, r1 = _synthesis_layer(block.child("conv1"), f"{bw}.conv1", 1, same)
        if r1 != res or (res > 4 and i1 != o0) or (res == 4 and i1 != const.shape[0]) or i1 != o1:
            raise ImportRefused(f"{bw}.conv1 has inconsistent channels or resolution")
        channels[str(res)] = o1
        has_torgb = res == resolution or arch == "skip"
        expected_ws = (1 if res == 4 else 2, 1 if has_torgb else 0)
        if (block.attr("num_conv"), block.attr("num_torgb")) != expected_ws:
            raise ImportRefused(f"{bw} has num_conv/num_torgb {block.attr('num_conv')}/{block.attr('num_torgb')}, "
                                f"expected {expected_ws[0]}/{expected_ws[1]}")
        torgb = block.child("torgb")
        if has_torgb:
            torgb = _module(torgb, "ToRGBLayer", f"{bw}.torgb")
            tw = _tensor(torgb, "weight", f"{bw}.torgb", 4)
            if tuple(tw.shape) != (img_channels, o1, 1, 1):
                raise ImportRefused(f"{bw}.torgb weight has shape {tuple(tw.shape)}")
            if not _close(_num(torgb.attr("weight_gain"), f"{bw}.torgb.weight_gain"), 1 / math.sqrt(o1)):
                raise ImportRefused(f"{bw}.torgb.weight_gain is not 1/sqrt(in_channels)")
            same.put("conv_clamp", _clamp(torgb.attr("conv_clamp"), f"{bw}.torgb"), f"{bw}.torgb")
        elif torgb is not None:
            raise ImportRefused(f"{bw} has a torgb layer the '{arch}' architecture does not use")
        skip = block.child("skip")
        if res > 4 and arch == "resnet":
            skip = _module(skip, "Conv2dLayer", f"{bw}.skip")
            sw = _tensor(skip, "weight", f"{bw}.skip", 4)
            ok = (tuple(sw.shape) == (o1, in_channels, 1, 1) and skip.attr("up") == 2 and skip.attr("down") == 1
                  and skip.attr("activation") == "linear" and skip.attr("conv_clamp") is None
                  and "bias" not in skip.tensors()
                  and _close(_num(skip.attr("weight_gain"), f"{bw}.skip.weight_gain"), 1 / math.sqrt(in_channels)))
            if not ok:
                raise ImportRefused(f"{bw}.skip is not the 1x1 up-sampling skip layer of a 'resnet' StyleGAN2")
            same.put("resample_filter", _filter_taps(_tensor(skip, "resample_filter", f"{bw}.skip"), bw), bw)
        elif skip is not None:
            raise ImportRefused(f"{bw} has a skip layer the '{arch}' architecture does not use")

    init = synthesis.attr("_init_kwargs") or {}
    base = {k: init[k] for k in ("channel_base", "channel_max") if isinstance(init.get(k), int) and init[k] > 0}
    config = ModelConfig(
        arch="stylegan2", resolution=resolution, z_dim=z_dim, w_dim=w_dim, img_channels=img_channels,
        mapping_layers=num_layers, mapping_lr_mul=lr_mul, c_dim=c_dim, channels_per_resolution=channels, **base,
        mapping_layer_features=0 if layer_features in (0, w_dim) else layer_features,
        embed_features=0 if embed_features in (0, w_dim) else embed_features,
        conv_clamp=same.values.get("conv_clamp"), architecture=same.values["architecture"],
        resample_filter=same.values["resample_filter"], use_noise=same.values.get("use_noise", True),
        num_fp16_res=fp16_blocks,
    )
    if config.num_ws != num_ws:
        raise ImportRefused(f"'{network}' has num_ws {num_ws}; a StyleGAN2 at {resolution}x{resolution} has "
                            f"{config.num_ws}")
    return config, _state_dict(G)


def _state_dict(G: PersistentObject) -> dict[str, torch.Tensor]:
    """NVlabs' tensor names -> ganserve's: mapping.w_avg -> w_avg, mapping. -> mapping_net., synthesis. ->
    synthesis_net.; resample filters as 2D; everything float32."""
    out = {}
    for name, t in G.named_tensors().items():
        if name == "mapping.w_avg":
            key = "w_avg"
        elif name.startswith("mapping."):
            key = "mapping_net." + name[len("mapping."):]
        elif name.startswith("synthesis."):
            key = "synthesis_net." + name[len("synthesis."):]
        else:
            key = name
        t = t.detach().to(torch.float32)
        if key.endswith("resample_filter") and t.ndim == 1:
            t = torch.outer(t, t)
        out[key] = t.contiguous()
    return out


def find_network(obj: Any, network: str | None) -> tuple[str, Any]:
    """The generator in an NVlabs snapshot dict: `network` if given, else G_ema, else G."""
    if not isinstance(obj, dict):
        raise ImportRefused(f"not an NVlabs network pickle: it holds a {type(obj).__name__}, not a dict of networks")
    keys = [k for k in obj if isinstance(k, str)]
    if network is not None:
        if network not in obj:
            raise ImportRefused(f"no network {network!r} in the file (it has: {', '.join(keys) or 'nothing'})")
        return network, obj[network]
    for key in NETWORK_KEYS:
        if key in obj:
            return key, obj[key]
    raise ImportRefused(f"not an NVlabs network pickle: no G_ema or G (keys: {', '.join(keys[:8]) or 'none'})")
