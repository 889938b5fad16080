"""The architecture description of a generator/discriminator pair, saved as a model directory's config.json.

Owns ModelConfig (validation, derived quantities such as num_ws and the channel schedule) and its JSON form.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ganserve.errors import ConfigError

ARCHS = ("progan", "stylegan", "stylegan2", "stylegan3")
TRAINABLE_ARCHS = ("progan", "stylegan", "stylegan2")  # ganserve train; StyleGAN3 models are imported
PROGRESSIVE_ARCHS = ("progan", "stylegan")  # grown from 4x4; StyleGAN2 trains at its full resolution throughout
SG3_CONFIGS = ("t", "r")  # StyleGAN3 config T (translation equivariant) and R (rotation too: 1x1 convs, radial filters)
SG2_ARCHITECTURES = ("orig", "skip", "resnet")  # StyleGAN2 generator: how toRGB outputs are combined
FORMAT_NAME = "ganserve-model"
FORMAT_VERSION = 1
MIN_RESOLUTION, MAX_RESOLUTION = 4, 1024
# Keys written into config.json that are derived from the fields, not fields themselves.
_DERIVED_KEYS = ("format", "version", "num_ws", "channels")
# Fields only StyleGAN2 uses: left out of the config.json of the other architectures.
_STYLEGAN2_KEYS = ("c_dim", "channel_base", "channel_max", "channels_per_resolution", "mapping_layer_features",
                   "embed_features", "conv_clamp", "architecture", "resample_filter", "use_noise", "num_fp16_res")
# Fields only StyleGAN3 uses, and the StyleGAN2 fields it shares.
_STYLEGAN3_KEYS = ("sg3_config", "sg3_input", "sg3_layers", "output_scale")
_STYLEGAN3_SHARED = ("c_dim", "channel_base", "channel_max", "conv_clamp", "num_fp16_res")
# The constants of one StyleGAN3 SynthesisLayer (NVlabs' attribute names), stored per layer in config.json.
SG3_LAYER_KEYS = ("name", "in_channels", "out_channels", "in_size", "out_size", "in_sampling_rate",
                  "out_sampling_rate", "in_cutoff", "out_cutoff", "in_half_width", "out_half_width", "is_torgb",
                  "is_critically_sampled", "use_fp16", "conv_kernel", "up_factor", "down_factor", "up_taps",
                  "down_taps", "down_radial", "padding")
SG3_INPUT_KEYS = ("channels", "size", "sampling_rate", "bandwidth")


def channels_at(resolution: int, fmap_base: int, fmap_max: int) -> int:
    """Feature maps at a resolution: fmap_base / (resolution / 2), capped at fmap_max (the papers' schedule)."""
    return max(1, min(int(fmap_base * 2 // resolution), fmap_max))


def stage_resolution(stage: int) -> int:
    """The image size at a progressive stage: 4x4 at stage 0, doubling with each stage."""
    return 4 * 2**stage


@dataclass
class ModelConfig:
    """Everything needed to rebuild the networks. The defaults are the papers' 1024x1024 configuration."""

    arch: str = "stylegan"
    resolution: int = 1024
    z_dim: int = 512
    w_dim: int = 512  # StyleGAN; ProGAN's "w" is the projected 4x4 feature map, w_dim = 16 * channels(4)
    img_channels: int = 3
    fmap_base: int = 8192
    fmap_max: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    blur: bool = True  # StyleGAN's low-pass filter around up/down sampling
    upsample_mode: str = "nearest"
    mbstd_group_size: int = 4
    training: dict[str, Any] = field(default_factory=dict)  # summary written by the trainer
    license: str = ""  # licence/attribution of the training data (of the weights, for imported models)
    # -- StyleGAN2 only (NVlabs' names); the other architectures ignore these ------------------------------------
    c_dim: int = 0  # conditioning label size (one-hot classes), 0 = unconditional
    channel_base: int = 32768  # channels at resolution r: min(channel_base // r, channel_max) ...
    channel_max: int = 512
    channels_per_resolution: dict[str, int] = field(default_factory=dict)  # ... unless given here explicitly
    mapping_layer_features: int = 0  # width of the hidden mapping layers, 0 = w_dim
    embed_features: int = 0  # width of the class embedding, 0 = w_dim
    conv_clamp: float | None = None  # clamp of conv outputs to +-conv_clamp, None = off
    architecture: str = "skip"  # orig | skip | resnet
    resample_filter: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])  # FIR taps (separable)
    use_noise: bool = True
    num_fp16_res: int = 0  # as the source: its float16 layers, run in float16 only on request (precision fp16)
    # -- StyleGAN3 only (also uses c_dim, channel_base/max, conv_clamp, num_fp16_res above) ------------------------
    sg3_config: str = "t"  # t | r (what the layout below was designed as; the layout itself is what counts)
    sg3_input: dict[str, Any] = field(default_factory=dict)  # SynthesisInput: channels, size, sampling_rate, bandwidth
    sg3_layers: list[dict[str, Any]] = field(default_factory=list)  # per SynthesisLayer: SG3_LAYER_KEYS
    output_scale: float = 0.25
    source: dict[str, Any] = field(default_factory=dict)  # where imported weights came from: file, sha256, format

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        r = self.resolution
        if not isinstance(r, int) or r < MIN_RESOLUTION or r > MAX_RESOLUTION or r & (r - 1):
            raise ConfigError(f"resolution must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {r!r}")
        for name in ("z_dim", "w_dim", "fmap_base", "fmap_max", "mapping_layers", "mbstd_group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.img_channels not in (1, 3):
            raise ConfigError(f"img_channels must be 1 (greyscale) or 3 (RGB), got {self.img_channels!r}")
        if self.upsample_mode not in ("nearest", "bilinear"):
            raise ConfigError(f"upsample_mode must be 'nearest' or 'bilinear', got {self.upsample_mode!r}")
        if not self.mapping_lr_mul > 0:
            raise ConfigError(f"mapping_lr_mul must be positive, got {self.mapping_lr_mul!r}")
        if self.arch == "progan":
            self.w_dim = 16 * self.channels(4)
        if self.arch == "stylegan2":
            self._validate_stylegan2()
        if self.arch == "stylegan3":
            self._validate_stylegan3()

    def _validate_stylegan2(self) -> None:
        for name in ("channel_base", "channel_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("c_dim", "mapping_layer_features", "embed_features", "num_fp16_res"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.architecture not in SG2_ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {', '.join(SG2_ARCHITECTURES)}, got {self.architecture!r}")
        if self.conv_clamp is not None and not (isinstance(self.conv_clamp, (int, float)) and self.conv_clamp > 0):
            raise ConfigError(f"conv_clamp must be a positive number or null, got {self.conv_clamp!r}")
        taps = self.resample_filter
        numbers = isinstance(taps, list) and all(isinstance(t, (int, float)) for t in taps)
        if not numbers or not taps or sum(taps) == 0:
            raise ConfigError(f"resample_filter must be a non-empty list of numbers with a non-zero sum, got {taps!r}")
        if not self.channels_per_resolution and self.channel_base // self.resolution < 1:
            raise ConfigError(f"channel_base {self.channel_base} gives no channels at resolution {self.resolution}")
        if self.channels_per_resolution:
            needed = {str(stage_resolution(s)) for s in range(self.num_stages)}
            given = self.channels_per_resolution
            if set(given) != needed or not all(isinstance(c, int) and c >= 1 for c in given.values()):
                raise ConfigError(f"channels_per_resolution must give a positive channel count for each of "
                                 f"{', '.join(sorted(needed, key=int))}, got {given!r}")

    def _validate_stylegan3(self) -> None:
        if self.sg3_config not in SG3_CONFIGS:
            raise ConfigError(f"sg3_config must be one of {', '.join(SG3_CONFIGS)}, got {self.sg3_config!r}")
        for name in ("channel_base", "channel_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.conv_clamp is not None and not (isinstance(self.conv_clamp, (int, float)) and self.conv_clamp > 0):
            raise ConfigError(f"conv_clamp must be a positive number or null, got {self.conv_clamp!r}")
        if not self.sg3_layers and not self.sg3_input:
            self.sg3_input, self.sg3_layers = stylegan3_layout(
                self.resolution, self.img_channels, self.channel_base, self.channel_max,
                conv_kernel=1 if self.sg3_config == "r" else 3, use_radial_filters=self.sg3_config == "r",
                num_fp16_res=self.num_fp16_res)
        if not isinstance(self.sg3_input, dict) or set(self.sg3_input) != set(SG3_INPUT_KEYS):
            raise ConfigError(f"sg3_input must give {', '.join(SG3_INPUT_KEYS)}, got {self.sg3_input!r}")
        layers = self.sg3_layers
        if not isinstance(layers, list) or len(layers) < 2 or not all(isinstance(x, dict) for x in layers):
            raise ConfigError("sg3_layers must be a list of at least two layer descriptions")
        prev_channels, prev_size = self.sg3_input["channels"], self.sg3_input["size"]
        for i, layer in enumerate(layers):
            if set(layer) != set(SG3_LAYER_KEYS):
                missing = sorted(set(SG3_LAYER_KEYS) - set(layer))
                extra = sorted(set(layer) - set(SG3_LAYER_KEYS))
                raise ConfigError(f"sg3_layers[{i}]: missing {missing}, unknown {extra}")
            for key in ("in_channels", "out_channels", "in_size", "out_size", "conv_kernel", "up_factor",
                        "down_factor", "up_taps", "down_taps"):
                if not isinstance(layer[key], int) or isinstance(layer[key], bool) or layer[key] < 1:
                    raise ConfigError(f"sg3_layers[{i}].{key} must be a positive integer, got {layer[key]!r}")
            pad = layer["padding"]
            if not isinstance(pad, list) or len(pad) != 4 or not all(isinstance(p, int) for p in pad):
                raise ConfigError(f"sg3_layers[{i}].padding must be 4 integers, got {pad!r}")
            if (layer["in_channels"], layer["in_size"]) != (prev_channels, prev_size):
                raise ConfigError(f"sg3_layers[{i}] takes {layer['in_channels']} channels at {layer['in_size']}px, "
                                 f"the layer before gives {prev_channels} at {prev_size}px")
            if bool(layer["is_torgb"]) != (i == len(layers) - 1):
                raise ConfigError("sg3_layers: the last layer, and only it, is the toRGB layer")
            prev_channels, prev_size = layer["out_channels"], layer["out_size"]
        if (prev_channels, prev_size) != (self.img_channels, self.resolution):
            raise ConfigError(f"sg3_layers end with {prev_channels} channels at {prev_size}px, not the image's "
                             f"{self.img_channels} at {self.resolution}px")

    def layer_resolutions(self) -> list[float]:
        """The resolution each ws entry draws: 4 * 2**(i // 2) for StyleGAN/StyleGAN2; for StyleGAN3 twice the
        entry's cutoff frequency (the input's bandwidth, then each layer's output cutoff). Style-mixing presets
        (coarse/middle/fine) are mapped by it."""
        if self.arch == "stylegan3":
            return [2.0 * self.sg3_input["bandwidth"]] + [2.0 * layer["out_cutoff"] for layer in self.sg3_layers]
        return [4.0 * 2 ** (i // 2) for i in range(self.num_ws)]

    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def num_stages(self) -> int:
        """Stages of progressive growing: stage 0 is 4x4, the last one is the full resolution."""
        return self.log2_resolution - 1

    @property
    def num_ws(self) -> int:
        """Style inputs of the synthesis network: two per resolution for StyleGAN, one latent for ProGAN."""
        if self.arch == "stylegan3":
            return len(self.sg3_layers) + 1  # the input's affine + one per layer (NVlabs: num_layers + 2)
        return 2 * self.log2_resolution - 2 if self.arch != "progan" else 1

    @property
    def supports_mixing(self) -> bool:
        return self.arch != "progan"

    def stage_resolution(self, stage: int) -> int:
        return stage_resolution(stage)

    def channels(self, resolution: int) -> int:
        if self.arch == "stylegan2":
            if self.channels_per_resolution:
                return self.channels_per_resolution[str(resolution)]
            return min(self.channel_base // resolution, self.channel_max)
        return channels_at(resolution, self.fmap_base, self.fmap_max)

    def channel_schedule(self) -> dict[int, int]:
        if self.arch == "stylegan3":
            return {}  # per layer instead: sg3_layers
        return {self.stage_resolution(s): self.channels(self.stage_resolution(s)) for s in range(self.num_stages)}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        d.update(dataclasses.asdict(self))
        keep = {"stylegan2": _STYLEGAN2_KEYS, "stylegan3": _STYLEGAN3_KEYS + _STYLEGAN3_SHARED}.get(self.arch, ())
        for key in _STYLEGAN2_KEYS + _STYLEGAN3_KEYS:
            if key not in keep:
                del d[key]
        if not self.source:
            del d["source"]
        d["num_ws"] = self.num_ws
        d["channels"] = {str(r): c for r, c in self.channel_schedule().items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError("config must be a JSON object")
        if d.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise ConfigError(f"not a {FORMAT_NAME} config (format={d.get('format')!r})")
        if int(d.get("version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ConfigError(
                f"config version {d['version']} is newer than this ganserve understands ({FORMAT_VERSION}); upgrade"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - set(_DERIVED_KEYS))
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def stylegan3_layout(resolution: int, img_channels: int, channel_base: int, channel_max: int, num_layers: int = 14,
                     num_critical: int = 2, first_cutoff: float = 2, first_stopband: float = 2**2.1,
                     last_stopband_rel: float = 2**0.3, margin_size: int = 10, conv_kernel: int = 3,
                     filter_size: int = 6, lrelu_upsampling: int = 2, use_radial_filters: bool = False,
                     num_fp16_res: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The layer constants of a new StyleGAN3 synthesis network, computed as NVlabs' SynthesisNetwork and
    SynthesisLayer do (geometric progression of cutoffs and stopbands, sampling rates, sizes, channels, filter
    taps, padding). Imported networks do not use this: their stored values are kept."""
    import numpy as np

    last_cutoff = resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin_size * 2
    sizes[-2:] = resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    sg3_input = dict(channels=int(channels[0]), size=int(sizes[0]), sampling_rate=float(sampling_rates[0]),
                     bandwidth=float(cutoffs[0]))
    layers = []
    for idx in range(num_layers + 1):
        prev = max(idx - 1, 0)
        is_torgb = idx == num_layers
        is_critical = idx >= num_layers - num_critical
        in_sr, out_sr = int(sampling_rates[prev]), int(sampling_rates[idx])
        tmp_sr = max(in_sr, out_sr) * (1 if is_torgb else lrelu_upsampling)
        up, down = int(np.rint(tmp_sr / in_sr)), int(np.rint(tmp_sr / out_sr))
        up_taps = filter_size * up if up > 1 and not is_torgb else 1
        down_taps = filter_size * down if down > 1 and not is_torgb else 1
        kernel = 1 if is_torgb else conv_kernel
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2
        layers.append(dict(
            name=f"L{idx}_{out_size}_{int(channels[idx])}", in_channels=int(channels[prev]),
            out_channels=int(channels[idx]), in_size=in_size, out_size=out_size, in_sampling_rate=in_sr,
            out_sampling_rate=out_sr, in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
            in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]), is_torgb=is_torgb,
            is_critically_sampled=bool(is_critical), use_fp16=bool(sampling_rates[idx] * 2**num_fp16_res > resolution),
            conv_kernel=kernel, up_factor=up, down_factor=down, up_taps=up_taps, down_taps=down_taps,
            down_radial=bool(use_radial_filters and not is_critical),
            padding=[pad_lo, pad_total - pad_lo, pad_lo, pad_total - pad_lo]))
    return sg3_input, layers
