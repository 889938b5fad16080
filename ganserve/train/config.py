"""TrainConfig, the one dataclass a training run is described by (saved as train_config.json next to the run).

Owns the papers' defaults per architecture (losses, batch sizes), validation, and the progressive Schedule.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ganserve.errors import ConfigError
from ganserve.models.config import PROGRESSIVE_ARCHS, TRAINABLE_ARCHS, ModelConfig, stage_resolution

LOSSES = ("wgan_gp", "logistic")
DEFAULT_LOSS = {"progan": "wgan_gp", "stylegan": "logistic", "stylegan2": "logistic"}
DEFAULT_PL_WEIGHT = {"stylegan2": 2.0}  # StyleGAN2 (and StyleGAN2-ADA but for CIFAR); 0 elsewhere
# Minibatch size per resolution. ProGAN paper: 16 up to 128^2, then 14, 6, 3. StyleGAN (FFHQ config): 256 at
# 4-16^2 over 8 GPUs, halving from there; ours is its per-8-GPU dict halved to fit one GPU. StyleGAN2 (one
# resolution, the last): StyleGAN2-ADA's automatic configuration on one GPU, min(4096 / resolution, 32).
DEFAULT_BATCH_SIZES = {
    "progan": {4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3},
    "stylegan": {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4},
    "stylegan2": {4: 32, 8: 32, 16: 32, 32: 32, 64: 32, 128: 32, 256: 16, 512: 8, 1024: 4},
}
CONFIG_NAME = "train_config.json"
# ModelConfig fields a TrainConfig may set (None = ModelConfig's default).
MODEL_FIELDS = ("z_dim", "w_dim", "img_channels", "fmap_base", "fmap_max", "mapping_layers", "mbstd_group_size")


# Differentiable augmentations of the discriminator's inputs (ganserve.train.augment), in the order applied.
AUGMENTS = ("color", "translation", "cutout")

# Fields of TrainConfig that `--resume` may change: the length of the final stage, the half-life of the served
# EMA generator (it never feeds back into training), and how the run reports.
# Also the discriminator's augmentation and the learning rate: switching augmentation on when the discriminator
# starts to win, or lowering the rate for a run's last stretch, are deliberate changes of course, recorded in the
# run's train_config.json like the others.
RESUME_OVERRIDABLE = ("data", "final_kimg", "ema_kimg", "augment", "lr", "checkpoint_kimg", "keep_checkpoints",
                      "metric_num", "workers", "tensorboard", "progress")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run. Lengths are in kimg (thousands of real images shown to D), scaled by kimg_scale.

    Frozen: a changed config is a new one (dataclasses.replace); ganserve.train.run.resolve fills in what a run
    takes from its data and its checkpoint."""

    data: str = ""
    out: str = "runs/run"
    arch: str = "stylegan"
    resolution: int | None = None  # None: the largest power of two that fits the first image
    # network size (None: ModelConfig's defaults, the papers' 1024^2 networks)
    z_dim: int | None = None
    w_dim: int | None = None
    img_channels: int = 3
    fmap_base: int | None = None
    fmap_max: int | None = None
    mapping_layers: int | None = None
    mbstd_group_size: int | None = None
    # progressive schedule (ProGAN paper: 600 kimg fade_in + 600 kimg stabilise per resolution)
    grow: bool | None = None  # None: progan and stylegan grow, stylegan2 does not (--grow: with ProGAN's D)
    fade_kimg: float = 600.0
    stab_kimg: float = 600.0
    final_kimg: float | None = None  # stabilise length at the final resolution; None: stab_kimg
    kimg_scale: float = 1.0  # multiplies every length above (and ema_kimg): 0.01 for a quick run
    batch_sizes: dict[int, int] = field(default_factory=dict)  # resolution -> global batch; empty: arch default
    # losses and optimiser
    loss: str = ""  # wgan_gp (ProGAN's default) or logistic (StyleGAN's); empty: the arch's default
    gp_lambda: float = 10.0  # wgan_gp
    gp_target: float = 1.0
    drift: float = 0.001  # wgan_gp epsilon_drift
    r1_gamma: float = 10.0  # logistic + r1
    reg_interval: int = 1  # the penalty (gp or r1) on every reg_interval-th D step, weighted reg_interval times
    pl_weight: float | None = None  # StyleGAN2's path length regularisation of G; None: 2 for stylegan2, else 0
    pl_interval: int = 4  # ... on every pl_interval-th G step, weighted pl_interval times
    lr: float = 0.001
    betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    ema_kimg: float = 10.0  # half-life of the generator EMA (G_ema, the one served)
    w_avg_beta: float = 0.995
    style_mixing_prob: float = 0.9  # StyleGAN only
    # data
    mirror: bool = False  # x-flip augmentation
    augment: str = ""  # differentiable augmentation of D's inputs: a comma list of translation, cutout, color
    background: str = "white"  # RGBA images are composited over this colour
    workers: int = 2  # DataLoader worker processes (0: load in the training process)
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with bfloat16 instructions
    channels_last: bool = True
    checkpoint_kimg: float = 100.0  # also at the end of every stage
    keep_checkpoints: int = 3
    grid_seeds: str = "0-15"
    metric_num: int = 2048  # images for the final SWD (0: skip)
    tensorboard: bool = True
    progress: bool = True
    license: str = ""  # licence/attribution of the data set, copied into the model's config.json

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "batch_sizes", {int(k): int(v) for k, v in self.batch_sizes.items()})
        if not self.loss:
            object.__setattr__(self, "loss", DEFAULT_LOSS.get(self.arch, ""))
        if self.grow is None:
            object.__setattr__(self, "grow", self.arch in PROGRESSIVE_ARCHS)
        if self.pl_weight is None:
            object.__setattr__(self, "pl_weight", 0.0 if self.grow else DEFAULT_PL_WEIGHT.get(self.arch, 0.0))
        self.validate()

    def validate(self) -> None:
        if self.arch not in TRAINABLE_ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(TRAINABLE_ARCHS)} for training, got {self.arch!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("fade_kimg", "stab_kimg", "kimg_scale", "lr", "ema_kimg", "checkpoint_kimg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.final_kimg is not None and not self.final_kimg > 0:
            raise ConfigError(f"final_kimg must be positive, got {self.final_kimg!r}")
        for name in ("gp_lambda", "drift", "r1_gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if not 0.0 <= self.style_mixing_prob <= 1.0:
            raise ConfigError(f"style_mixing_prob must be in [0, 1], got {self.style_mixing_prob!r}")
        if not 0.0 <= self.w_avg_beta < 1.0:
            raise ConfigError(f"w_avg_beta must be in [0, 1), got {self.w_avg_beta!r}")
        for name in ("reg_interval", "pl_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.pl_weight >= 0:
            raise ConfigError(f"pl_weight must not be negative, got {self.pl_weight!r}")
        if self.arch in PROGRESSIVE_ARCHS and not self.grow:
            raise ConfigError(f"{self.arch} always grows from 4x4 (grow off is for stylegan2)")
        if self.pl_weight > 0 and self.grow:
            raise ConfigError(f"path length regularisation (pl_weight) is for stylegan2 at its full resolution, "
                              f"not for a network that grows ({self.arch})")
        parse_augment(self.augment)
        if self.workers < 0 or self.keep_checkpoints < 1 or self.metric_num < 0:
            raise ConfigError("workers and metric_num must be >= 0, keep_checkpoints >= 1")
        bad = {r: b for r, b in self.batch_sizes.items() if b < 1 or r < 4 or r & (r - 1)}
        if bad:
            raise ConfigError(f"batch sizes must map powers of two >= 4 to positive sizes, got {bad}")

    # -- derived ----------------------------------------------------------------------------------------------
    def model_config(self, resolution: int | None = None) -> ModelConfig:
        resolution = resolution or self.resolution
        if resolution is None:
            raise ConfigError("resolution is not known yet (it is taken from the data set)")
        extra = {f: getattr(self, f) for f in MODEL_FIELDS if getattr(self, f) is not None}
        if self.arch == "stylegan2":  # NVlabs' names for the same schedule: channel_base / r = fmap_base / (r / 2)
            if resolution < 8:
                raise ConfigError(f"stylegan2 trains at 8x8 or more (its discriminator halves down to 4x4), "
                                  f"got {resolution}x{resolution}")
            if "fmap_base" in extra:
                extra["channel_base"] = 2 * extra.pop("fmap_base")
            if "fmap_max" in extra:
                extra["channel_max"] = extra.pop("fmap_max")
        return ModelConfig(arch=self.arch, resolution=resolution, **extra)

    def batch_size(self, resolution: int) -> int:
        return self.batch_sizes.get(resolution, DEFAULT_BATCH_SIZES[self.arch][resolution])

    # -- JSON -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["batch_sizes"] = {str(k): v for k, v in self.batch_sizes.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def parse_batch_sizes(spec: str) -> dict[int, int]:
    """'4:64,8:64,16:32' -> {4: 64, 8: 64, 16: 32}; a bare '32' means 32 at every resolution."""
    spec = spec.strip()
    if spec.isdigit():
        return {stage_resolution(s): int(spec) for s in range(9)}
    try:
        pairs = [part.split(":") for part in spec.split(",") if part.strip()]
        return {int(r): int(b) for r, b in pairs}
    except ValueError:
        raise ConfigError(f"bad batch sizes {spec!r}: use one number or 'res:batch' pairs like 4:64,8:32") from None


def parse_augment(spec: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' or 'none' -> (). Unknown names raise ConfigError."""
    names = tuple(part.strip() for part in spec.split(",") if part.strip() not in ("", "none"))
    bad = [name for name in names if name not in AUGMENTS]
    if bad:
        raise ConfigError(f"unknown augmentation {', '.join(map(repr, bad))}: use a comma list of "
                         f"{', '.join(AUGMENTS)}, or none")
    return names


class Phase(NamedTuple):
    """Where a step sits in the progressive schedule."""

    step: int
    nimg: int  # real images shown before this step
    stage: int
    alpha: float  # fade_in weight of the newest stage (1 when stabilising)
    batch: int  # global batch size of this step


class Schedule:
    """Progressive growing as a function of images shown: stage 0 (4x4) stabilises, each later stage fades in
    over fade_kimg then stabilises over stab_kimg (final_kimg at the last stage). An architecture that does not
    grow (StyleGAN2) spends the whole run, final_kimg, at the last stage: the earlier stages take no images."""

    def __init__(self, cfg: TrainConfig, num_stages: int):
        self.num_stages = num_stages
        scale = 1000 * cfg.kimg_scale
        fade, stab = round(cfg.fade_kimg * scale), round(cfg.stab_kimg * scale)
        final = round((cfg.final_kimg if cfg.final_kimg is not None else cfg.stab_kimg) * scale)
        self.progressive = cfg.grow
        if self.progressive:
            self.fade = [0] + [max(fade, 1)] * (num_stages - 1)
            self.stab = [max(stab, 1)] * (num_stages - 1) + [max(final, 1)]
        else:
            self.fade = [0] * num_stages
            self.stab = [0] * (num_stages - 1) + [max(final, 1)]
        self.start = []
        t = 0
        for s in range(num_stages):
            self.start.append(t)
            t += self.fade[s] + self.stab[s]
        self.total_nimg = t
        self.batches = [cfg.batch_size(stage_resolution(s)) for s in range(num_stages)]

    def stage_alpha(self, nimg: int) -> tuple[int, float]:
        stage = max(s for s in range(self.num_stages) if self.start[s] <= nimg) if nimg >= 0 else 0
        into = nimg - self.start[stage]
        alpha = min(into / self.fade[stage], 1.0) if self.fade[stage] else 1.0
        return stage, alpha

    def steps(self, start_step: int = 0, start_nimg: int = 0) -> Iterator[Phase]:
        """The steps from a position to the end of training."""
        step, nimg = start_step, start_nimg
        while nimg < self.total_nimg:
            stage, alpha = self.stage_alpha(nimg)
            yield Phase(step, nimg, stage, alpha, self.batches[stage])
            nimg += self.batches[stage]
            step += 1
