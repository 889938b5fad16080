"""The architecture description of a generator/discriminator pair, saved as a model directory's config.json.

Owns ModelConfig (validation, derived quantities such as num_ws and the channel schedule) and its JSON form.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ganserve.models.layers import channels_at

ARCHS = ("progan", "stylegan")
FORMAT_NAME = "ganserve-model"
FORMAT_VERSION = 1
MIN_RESOLUTION, MAX_RESOLUTION = 4, 1024
# Keys written into config.json that are derived from the fields, not fields themselves.
_DERIVED_KEYS = ("format", "version", "num_ws", "channels")


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
    license: str = ""  # licence/attribution of the training data

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
        return 2 * self.log2_resolution - 2 if self.arch == "stylegan" else 1

    @property
    def supports_mixing(self) -> bool:
        return self.arch == "stylegan"

    def stage_resolution(self, stage: int) -> int:
        return 4 * 2**stage

    def channels(self, resolution: int) -> int:
        return channels_at(resolution, self.fmap_base, self.fmap_max)

    def channel_schedule(self) -> dict[int, int]:
        return {self.stage_resolution(s): self.channels(self.stage_resolution(s)) for s in range(self.num_stages)}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        d.update(dataclasses.asdict(self))
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
