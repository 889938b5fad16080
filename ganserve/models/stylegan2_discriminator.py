"""The StyleGAN2 discriminator (Karras et al. 2020, the 'resnet' architecture of their configs E and F): what
`ganserve train --arch stylegan2` trains against. Only training uses it; a model directory holds the generator.

fromRGB at the full resolution only (no progressive growing), then per resolution a block of a 3x3 convolution and a
3x3 convolution that FIR-filters and halves the resolution, with a 1x1 residual skip that is filtered and halved the
same way and both branches weighted sqrt(1/2); at 4x4 minibatch standard deviation, a 3x3 convolution, a dense layer
and the score. Equalized learning rate throughout: weights drawn from N(0, 1), scaled by 1/sqrt(fan_in) when used,
leaky ReLU outputs multiplied by sqrt(2). Channels follow the generator's schedule (ModelConfig.channels). Layer and
parameter names follow NVlabs' stylegan2-ada-pytorch (b64.fromrgb, b64.conv0, ..., b4.out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.layers import LRELU_GAIN, minibatch_stddev
from ganserve.models.stylegan2 import FullyConnectedLayer, bias_act, check_full_resolution, fir_filter, setup_filter


class Conv2dLayer(nn.Module):
    """Equalized convolution, optionally halving the resolution (`down`: FIR filter, then stride 2, as NVlabs'
    conv2d_resample), then bias and leaky ReLU (with gain sqrt 2) or nothing."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, lrelu: bool = True, bias: bool = True,
                 down: bool = False, resample_filter: list[float] = (1, 3, 3, 1)):
        super().__init__()
        self.lrelu, self.down, self.padding = lrelu, down, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.down:
            fw, k = self.resample_filter.shape[-1], self.weight.shape[-1]
            if k == 1:  # filter and halve, then the 1x1 product (fewer products)
                x = fir_filter(x, self.resample_filter, ((fw - 1) // 2, (fw - 2) // 2))[:, :, ::2, ::2]
                x = F.conv2d(x, w)
            else:  # filter at full size with the convolution's padding folded in, then a stride-2 convolution
                pad = self.padding + (fw - 1) // 2, self.padding + (fw - 2) // 2
                x = F.conv2d(fir_filter(x, self.resample_filter, pad), w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.padding)
        return bias_act(x, self.bias, lrelu=self.lrelu, gain=(LRELU_GAIN if self.lrelu else 1.0) * gain)


class DiscriminatorBlock(nn.Module):
    """Resolution r with C(r) channels -> r/2 with C(r/2): [fromRGB], conv0, conv1 (down), resnet skip (down)."""

    def __init__(self, in_channels: int, channels: int, out_channels: int, img_channels: int,
                 resample_filter: list[float]):
        super().__init__()
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))  # NVlabs' block has one too
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, channels, 1)
        self.conv0 = Conv2dLayer(channels, channels, 3)
        self.conv1 = Conv2dLayer(channels, out_channels, 3, down=True, resample_filter=resample_filter)
        self.skip = Conv2dLayer(channels, out_channels, 1, lrelu=False, bias=False, down=True,
                                resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if x is None:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """4x4: minibatch standard deviation (one feature), a 3x3 convolution, a dense layer, the score."""

    def __init__(self, channels: int, mbstd_group_size: int):
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        self.conv = Conv2dLayer(channels + 1, channels, 3)
        self.fc = FullyConnectedLayer(channels * 16, channels, lrelu=True)
        self.out = FullyConnectedLayer(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(minibatch_stddev(x, self.mbstd_group_size))
        x = self.fc(x.flatten(1))
        return self.out(x)


class StyleGAN2Discriminator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.resolution < 8:
            raise ValueError(f"the StyleGAN2 discriminator needs a resolution of at least 8, got {config.resolution}")
        self.config = config
        self.block_resolutions = [2**i for i in range(config.log2_resolution, 2, -1)]  # R, R/2, ..., 8
        c = config.channels
        for res in self.block_resolutions:
            block = DiscriminatorBlock(0 if res == config.resolution else c(res), c(res), c(res // 2),
                                       config.img_channels, config.resample_filter)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(c(4), config.mbstd_group_size)

    def forward(self, img: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """img [N, C, R, R] -> score [N]. Not progressive: `stage`/`alpha`, when given, must be the last stage."""
        check_full_resolution(self.config, stage, alpha)
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x).squeeze(1)
