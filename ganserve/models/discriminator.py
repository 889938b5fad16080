"""The progressive discriminator of ProGAN, also used by StyleGAN (which adds a blur before downsampling).

fromRGB at every stage, two 3x3 convs and a downsample per stage, then minibatch_stddev, conv, dense, dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.layers import (
    LRELU_SLOPE,
    Blur,
    EqualizedConv2d,
    EqualizedLinear,
    downsample,
    fade_in,
    minibatch_stddev,
)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


class DiscriminatorBlock(nn.Module):
    """conv 3x3, conv 3x3, [blur], downsample: resolution r with C(r) channels -> r/2 with C(r/2)."""

    def __init__(self, in_channels: int, out_channels: int, blur: bool, mode: str):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)
        self.blur = Blur() if blur else None
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _lrelu(self.conv0(x))
        x = self.conv1(x)
        if self.blur is not None:
            x = self.blur(x)
        return _lrelu(downsample(x, self.mode))


class Discriminator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.channels
        res = config.stage_resolution
        blur = config.blur and config.arch == "stylegan"
        self.from_rgb = nn.ModuleList(
            EqualizedConv2d(config.img_channels, c(res(s)), 1) for s in range(config.num_stages)
        )
        # blocks[s - 1] takes stage s's resolution down to stage s - 1's.
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(c(res(s)), c(res(s - 1)), blur, config.upsample_mode)
            for s in range(1, config.num_stages)
        )
        c4 = c(4)
        self.final_conv = EqualizedConv2d(c4 + 1, c4, 3)
        self.final_dense = EqualizedLinear(c4 * 16, c4)
        self.out = EqualizedLinear(c4, 1, gain=1.0)

    def forward(self, img: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """img [N, C, R, R] at the stage's resolution -> score [N]."""
        stage = self.config.num_stages - 1 if stage is None else stage
        x = _lrelu(self.from_rgb[stage](img))
        if stage > 0:
            x = self.blocks[stage - 1](x)
            if alpha < 1.0:
                old = _lrelu(self.from_rgb[stage - 1](downsample(img, self.config.upsample_mode)))
                x = fade_in(old, x, alpha)
            for s in range(stage - 1, 0, -1):
                x = self.blocks[s - 1](x)
        x = minibatch_stddev(x, self.config.mbstd_group_size)
        x = _lrelu(self.final_conv(x))
        x = _lrelu(self.final_dense(x.flatten(1)))
        return self.out(x).squeeze(1)
