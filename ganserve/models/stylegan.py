"""The StyleGAN generator (Karras et al. 2018, "A Style-Based Generator Architecture for GANs").

MappingNetwork z -> w (8 layers, lr multiplier 0.01), a learned constant 4x4 input, and per resolution two
SynthesisLayers: conv, noise injection, bias, leaky ReLU, AdaIN driven by one of the num_ws styles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.layers import (
    LRELU_SLOPE,
    AdaIN,
    Blur,
    EqualizedConv2d,
    EqualizedLinear,
    NoiseInjection,
    pixel_norm,
    upsample_conv,
)


class MappingNetwork(nn.Module):
    """z -> pixel_norm -> `num_layers` equalized dense layers with leaky ReLU -> w [N, w_dim]."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int, lr_mul: float):
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqualizedLinear(a, b, lr_mul=lr_mul) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
        return x


class LayerEpilogue(nn.Module):
    """Noise injection, bias, leaky ReLU, then AdaIN with one style vector."""

    def __init__(self, channels: int, w_dim: int, resolution: int):
        super().__init__()
        self.noise = NoiseInjection(channels, resolution)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.adain = AdaIN(channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.noise(x, noise) + self.bias.view(1, -1, 1, 1)
        return self.adain(F.leaky_relu(x, LRELU_SLOPE), w)


class SynthesisLayer(nn.Module):
    """[upsample] conv 3x3 [blur], then the epilogue."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool, config: ModelConfig):
        super().__init__()
        self.conv = EqualizedConv2d(in_channels, out_channels, 3, bias=False)
        self.blur = Blur() if (up and config.blur) else None
        self.up = up
        self.upsample_mode = config.upsample_mode
        self.epilogue = LayerEpilogue(out_channels, w_dim, resolution)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = upsample_conv(x, self.conv, self.upsample_mode) if self.up else self.conv(x)
        if self.blur is not None:
            x = self.blur(x)
        return self.epilogue(x, w, noise)


class SynthesisBlock(nn.Module):
    """One resolution: conv0_up (doubling the size) and conv1, using styles ws[:, 2k] and ws[:, 2k + 1]."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, config: ModelConfig):
        super().__init__()
        self.conv0_up = SynthesisLayer(in_channels, out_channels, config.w_dim, resolution, True, config)
        self.conv1 = SynthesisLayer(out_channels, out_channels, config.w_dim, resolution, False, config)


class StyleGANGenerator(ProgressiveGenerator):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config.channels
        c4 = c(4)
        self.mapping_net = MappingNetwork(config.z_dim, config.w_dim, config.mapping_layers, config.mapping_lr_mul)
        self.const = nn.Parameter(torch.ones(1, c4, 4, 4))
        self.const_epilogue = LayerEpilogue(c4, config.w_dim, 4)
        self.conv = SynthesisLayer(c4, c4, config.w_dim, 4, False, config)
        self.blocks = nn.ModuleList(
            SynthesisBlock(c(config.stage_resolution(s - 1)), c(config.stage_resolution(s)),
                           config.stage_resolution(s), config)
            for s in range(1, config.num_stages)
        )
        self.to_rgb = nn.ModuleList(
            EqualizedConv2d(c(config.stage_resolution(s)), config.img_channels, 1, gain=1.0)
            for s in range(config.num_stages)
        )

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim] (the same w broadcast to every layer)."""
        return self.mapping_net(z).unsqueeze(1).repeat(1, self.num_ws, 1)

    def noise_resolutions(self) -> list[int]:
        return [self.config.stage_resolution(i // 2) for i in range(self.num_ws)]

    def const_noise(self) -> list[torch.Tensor]:
        layers = [self.const_epilogue, self.conv.epilogue]
        for block in self.blocks:
            layers += [block.conv0_up.epilogue, block.conv1.epilogue]
        return [layer.noise.noise_const for layer in layers]

    def input_block(self, ws: torch.Tensor, noise: list[torch.Tensor] | None) -> torch.Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.const_epilogue(x, ws[:, 0], noise[0] if noise is not None else None)
        return self.conv(x, ws[:, 1], noise[1] if noise is not None else None)

    def run_block(self, stage: int, x: torch.Tensor, ws: torch.Tensor, noise: list[torch.Tensor] | None):
        block = self.blocks[stage - 1]
        i = 2 * stage
        x = block.conv0_up(x, ws[:, i], noise[i] if noise is not None else None)
        return block.conv1(x, ws[:, i + 1], noise[i + 1] if noise is not None else None)
