"""The architecture description of a generator/discriminator pair, saved as a model directory's config.json.

Owns ModelConfig (validation, derived quantities such as num_ws and the channel schedule) and its JSON form.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ganserve.models.layers import channels_at

ARCHS = ("progan", "stylegan", "stylegan2")
TRAINABLE_ARCHS = ("progan", "stylegan")  # ganserve train's progressive trainer; StyleGAN2 models are imported
SG2_ARCHITECTURES = ("orig", "skip", "resnet")  # StyleGAN2 generator: how toRGB outputs are combined
FORMAT_NAME = "ganserve-model"
FORMAT_VERSION = 1
MIN_RESOLUTION, MAX_RESOLUTION = 4, 1024
# Keys written into config.json that are derived from the fields, not fields themselves.
_DERIVED_KEYS = ("format", "version", "num_ws", "channels")
# Fields only StyleGAN2 uses: left out of the config.json of the other architectures.
_STYLEGAN2_KEYS = ("c_dim", "channel_base", "channel_max", "channels_per_resolution", "mapping_layer_features",
                   "embed_features", "conv_clamp", "architecture", "resample_filter", "use_noise", "num_fp16_res")


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
    num_fp16_res: int = 0  # recorded from the source; ganserve runs the network in float32
    source: dict[str, Any] = field(default_factory=dict)  # where imported weights came from: file, sha256, format

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        r = self.resolution
        if not isinstance(r, int) or r < MIN_RESOLUTION or r > MAX_RESOLUTION or r & (r - 1):
            raise ValueError(f"resolution must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {r!r}")
        for name in ("z_dim", "w_dim", "fmap_base", "fmap_max", "mapping_layers", "mbstd_group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.img_channels not in (1, 3):
            raise ValueError(f"img_channels must be 1 (greyscale) or 3 (RGB), got {self.img_channels!r}")
        if self.upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {self.upsample_mode!r}")
        if not self.mapping_lr_mul > 0:
            raise ValueError(f"mapping_lr_mul must be positive, got {self.mapping_lr_mul!r}")
        if self.arch == "progan":
            self.w_dim = 16 * self.channels(4)
        if self.arch == "stylegan2":
            self._validate_stylegan2()

    def _validate_stylegan2(self) -> None:
        for name in ("channel_base", "channel_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("c_dim", "mapping_layer_features", "embed_features", "num_fp16_res"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.architecture not in SG2_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(SG2_ARCHITECTURES)}, got {self.architecture!r}")
        if self.conv_clamp is not None and not (isinstance(self.conv_clamp, (int, float)) and self.conv_clamp > 0):
            raise ValueError(f"conv_clamp must be a positive number or null, got {self.conv_clamp!r}")
        taps = self.resample_filter
        numbers = isinstance(taps, list) and all(isinstance(t, (int, float)) for t in taps)
        if not numbers or not taps or sum(taps) == 0:
            raise ValueError(f"resample_filter must be a non-empty list of numbers with a non-zero sum, got {taps!r}")
        if not self.channels_per_resolution and self.channel_base // self.resolution < 1:
            raise ValueError(f"channel_base {self.channel_base} gives no channels at resolution {self.resolution}")
        if self.channels_per_resolution:
            needed = {str(4 * 2**s) for s in range(self.num_stages)}
            given = self.channels_per_resolution
            if set(given) != needed or not all(isinstance(c, int) and c >= 1 for c in given.values()):
                raise ValueError(f"channels_per_resolution must give a positive channel count for each of "
                                 f"{', '.join(sorted(needed, key=int))}, got {given!r}")

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
        return 2 * self.log2_resolution - 2 if self.arch != "progan" else 1

    @property
    def supports_mixing(self) -> bool:
        return self.arch != "progan"

    def stage_resolution(self, stage: int) -> int:
        return 4 * 2**stage

    def channels(self, resolution: int) -> int:
        if self.arch == "stylegan2":
            if self.channels_per_resolution:
                return self.channels_per_resolution[str(resolution)]
            return min(self.channel_base // resolution, self.channel_max)
        return channels_at(resolution, self.fmap_base, self.fmap_max)

    def channel_schedule(self) -> dict[int, int]:
        return {self.stage_resolution(s): self.channels(self.stage_resolution(s)) for s in range(self.num_stages)}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        d.update(dataclasses.asdict(self))
        if self.arch != "stylegan2":
            for key in _STYLEGAN2_KEYS:
                del d[key]
        if not self.source:
            del d["source"]
        d["num_ws"] = self.num_ws
        d["channels"] = {str(r): c for r, c in self.channel_schedule().items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError("config must be a JSON object")
        if d.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} config (format={d.get('format')!r})")
        if int(d.get("version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ValueError(
                f"config version {d['version']} is newer than this ganserve understands ({FORMAT_VERSION}); upgrade"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - set(_DERIVED_KEYS))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})
