"""The ProGAN generator (Karras et al. 2017, "Progressive Growing of GANs").

Latent -> pixel_norm -> dense to 4x4 -> conv, then per stage: upsample, two 3x3 convs, each followed by pixel_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    EqualizedConv2d,
    EqualizedLinear,
    conv_phases,
    interleave_phases,
    pixel_norm,
    upsample_conv,
    upsample_conv_phases,
)


def _act_norm(x: torch.Tensor) -> torch.Tensor:
    return pixel_norm(F.leaky_relu(x, LRELU_SLOPE))


class ProGANBlock(nn.Module):
    """Upsample, conv 3x3, conv 3x3 (leaky ReLU and pixel_norm after each)."""

    def __init__(self, in_channels: int, out_channels: int, upsample_mode: str):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.upsample_mode = upsample_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act_norm(self.conv1(_act_norm(upsample_conv(x, self.conv0, self.upsample_mode))))

    def forward_phases(self, x: torch.Tensor) -> list[torch.Tensor]:
        """forward(x) as its four phase maps (ganserve.models.layers), for nearest upsampling."""
        return [_act_norm(p) for p in conv_phases([_act_norm(p) for p in upsample_conv_phases(x, self.conv0)],
                                                  self.conv1)]


class LatentProjection(nn.Module):
    """pixel_norm(z) -> dense to the 4x4 feature map (before its activation): ProGAN's counterpart of w.

    Truncation interpolates this feature map towards its average (`w_avg`), which is meaningful, unlike scaling z,
    whose length the following pixel_norm would erase.
    """

    def __init__(self, z_dim: int, channels: int):
        super().__init__()
        self.dense = EqualizedLinear(z_dim, channels * 16, gain=LRELU_GAIN / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))  # one bias per feature map, as in the paper

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dense(pixel_norm(z)) + self.bias.repeat_interleave(16)


class ProGANGenerator(ProgressiveGenerator):
    """num_ws = 1: the one "style" is the projected latent (w_dim = 16 * channels at 4x4); no style mixing."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config.channels
        c4 = c(4)
        self.mapping_net = LatentProjection(config.z_dim, c4)
        self.conv = EqualizedConv2d(c4, c4, 3)
        self.blocks = nn.ModuleList(
            ProGANBlock(c(config.stage_resolution(s - 1)), c(config.stage_resolution(s)), config.upsample_mode)
            for s in range(1, config.num_stages)
        )
        self.to_rgb = nn.ModuleList(
            EqualizedConv2d(c(config.stage_resolution(s)), config.img_channels, 1, gain=1.0)
            for s in range(config.num_stages)
        )

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping_net(z).unsqueeze(1)

    def input_block(self, ws: torch.Tensor, noise: list[torch.Tensor] | None) -> torch.Tensor:
        x = _act_norm(ws[:, 0].view(ws.shape[0], -1, 4, 4))
        return _act_norm(self.conv(x))

    def run_block(self, stage: int, x: torch.Tensor, ws: torch.Tensor, noise: list[torch.Tensor] | None):
        return self.blocks[stage - 1](x)

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None, stage: int | None = None,
                  alpha: float = 1.0) -> torch.Tensor:
        """As ProgressiveGenerator.synthesis. In an ONNX export with nearest upsampling the last stage runs on phase
        maps: its upsampling as four 2x2 convolutions of the smaller map and its second convolution on the phases,
        which ONNX Runtime's CPU provider runs in its blocked convolution kernels instead of a transposed
        convolution; the phases are interleaved only after toRGB, on three channels. The synthesis graph of
        progan-emoji64 takes 0.96x the time per image (benchmarks/README.md); eager PyTorch keeps the plain way."""
        last = self.last_stage if stage is None else stage
        if not (torch.onnx.is_in_onnx_export() and last == self.last_stage > 0 and alpha == 1.0
                and self.config.upsample_mode == "nearest"):
            return super().synthesis(ws, noise, stage, alpha)
        x = self.input_block(ws, noise)
        for s in range(1, last):
            x = self.run_block(s, x, ws, noise)
        return interleave_phases([self.to_rgb[last](p) for p in self.blocks[last - 1].forward_phases(x)])
