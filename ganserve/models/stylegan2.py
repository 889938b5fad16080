"""The StyleGAN2 generator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), laid out
as NVlabs' stylegan2-ada-pytorch so that its network pickles import by name (ganserve.models.importers).

MappingNetwork z (+ class embedding) -> w; per resolution a SynthesisBlock of modulated convolutions (weight
demodulation), FIR up-sampling, const noise buffers, bias + leaky ReLU with gain and conv_clamp, and ToRGB outputs
combined as 'skip' (or 'orig'/'resnet'). Everything is plain PyTorch and independent of the batch on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    EqualizedLinear,
    assert_shape,
    conv2d,
    fade_in,
    pixel_norm,
    run_in_precision,
    upsample,
)

# -- ops ----------------------------------------------------------------------------------------------------------


def check_full_resolution(config: ModelConfig, stage: int | None, alpha: float) -> None:
    """A network that does not grow: the trainer's stage and alpha, when given, must be the last stage, fully faded
    in."""
    last = config.num_stages - 1
    if (stage is not None and stage != last) or alpha < 1.0:
        raise ValueError(f"this {config.arch} network is not progressive: it runs at its full resolution only "
                         f"(stage {last}, alpha 1), got stage {stage}, alpha {alpha}")


def setup_filter(taps: list[float] | torch.Tensor) -> torch.Tensor:
    """The 2D FIR filter [k, k] of separable `taps`, normalised to unit DC gain (NVlabs' upfirdn2d.setup_filter)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f) if f.ndim == 1 else f
    return f / f.sum()


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, lrelu: bool, gain: float = 1.0,
             clamp: float | None = None) -> torch.Tensor:
    """Add the per-channel bias, leaky ReLU (or nothing), multiply by `gain`, clamp to +-clamp (NVlabs' bias_act)."""
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1)
    if lrelu:
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def zero_insert(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W] with x at even positions and zeros elsewhere (the 'up' of upfirdn2d)."""
    _, c, h, w = x.shape
    x = F.pad(x.reshape(-1, c, h, 1, w, 1), [0, 1, 0, 0, 0, 1])
    return x.reshape(-1, c, 2 * h, 2 * w)


def fir_filter(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """Convolve each channel with the 2D FIR filter `f` (a true convolution) after padding (before, after) each side;
    a negative pad crops."""
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1]).to(x.dtype)
    return conv2d(x, k[None, None].expand(c, 1, -1, -1), groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling: zero insertion, then the filter with gain 4 (NVlabs' upfirdn2d.upsample2d)."""
    fw = f.shape[-1]
    return fir_filter(zero_insert(x), f, ((fw + 1) // 2, (fw - 2) // 2), gain=4.0)


def conv2d_up(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
    """Up-sampling convolution as NVlabs' conv2d_resample(up=2): a stride-2 transposed convolution, written as zero
    insertion + an ordinary convolution with the flipped kernel (batch invariant, exports to ONNX), then the FIR
    filter with gain 4."""
    k, fw = weight.shape[-1], f.shape[-1]
    p0 = padding + (fw + 1) // 2 - (k - 1)  # the filter's padding, as conv2d_resample computes it
    p1 = padding + (fw - 2) // 2 - (k - 2)
    crop = max(min(-p0, -p1), 0)
    x = zero_insert(x)  # 2H: one zero more after the last sample than the transposed convolution has
    x = F.pad(x, [k - 1 - crop, k - 2 - crop, k - 1 - crop, k - 2 - crop])
    x = conv2d(x, weight.flip([2, 3]))
    return fir_filter(x, f, (p0 + crop, p1 + crop), gain=4.0)


def per_sample_matmul(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [N, I] @ m [I, O], one product per sample so that a row never depends on the batch (see EqualizedLinear)."""
    return torch.bmm(x.unsqueeze(1), m.unsqueeze(0).expand(x.shape[0], -1, -1)).squeeze(1)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, padding: int = 0, resample_filter: torch.Tensor | None = None):
    """Modulated convolution, NOT fused: scale the input activations by the styles, convolve with the shared weight,
    then multiply each output channel by the sample's demodulation coefficient. Any batch size, no grouped conv.

    `up`: up-sample by 2 first (conv2d_up with `resample_filter`).
    """
    n = x.shape[0]
    out_channels, in_channels, _, _ = weight.shape
    assert_shape(x, (None, in_channels, None, None), "x")
    assert_shape(styles, (n, in_channels), "styles")
    x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
    x = conv2d_up(x, weight, resample_filter, padding) if up else conv2d(x, weight, padding=padding)
    if not demodulate:
        return x
    # weight_demod: 1 / ||w * s|| per sample and output channel = rsqrt(s^2 @ sum_k w^2 + eps).
    dcoefs = (per_sample_matmul(styles.square(), weight.square().sum(dim=[2, 3]).t()) + 1e-8).rsqrt()  # [N, O]
    return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)


# -- layers -------------------------------------------------------------------------------------------------------


class FullyConnectedLayer(EqualizedLinear):
    """Equalized dense layer (weight gain lr_mul/sqrt(in), bias gain lr_mul) with an optional lrelu (gain sqrt 2)."""

    def __init__(self, in_features: int, out_features: int, lrelu: bool = False, lr_mul: float = 1.0,
                 bias_init: float = 0.0):
        super().__init__(in_features, out_features, gain=1.0, lr_mul=lr_mul, bias_init=bias_init * lr_mul)
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN if self.lrelu else x


class MappingNetwork(nn.Module):
    """z [N, z_dim] (+ class c [N, c_dim]) -> w [N, w_dim]: pixel_norm of z and of the class embedding, then
    `num_layers` dense layers with the lr multiplier. Layers are named fc0..fcK and embed, as in NVlabs' code."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_layers: int, lr_mul: float,
                 layer_features: int = 0, embed_features: int = 0):
        super().__init__()
        self.z_dim, self.c_dim, self.num_layers = z_dim, c_dim, num_layers
        embed_features = (embed_features or w_dim) if c_dim > 0 else 0
        layer_features = layer_features or w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], lrelu=True, lr_mul=lr_mul))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "z")
        x = pixel_norm(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this model is class-conditional (c_dim={self.c_dim}): it needs a class label "
                                 "(mapping(z, c) with one-hot c; `class` / --class in ganserve)")
            assert_shape(c, (z.shape[0], self.c_dim), "c")
            x = torch.cat([x, pixel_norm(self.embed(c.to(torch.float32)))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (up-sampling by 2 when `up`), noise, bias + lrelu with gain and conv_clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 use_noise: bool = True, resample_filter: list[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 kernel_size: int = 3):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None,
                gain: float = 1.0) -> torch.Tensor:
        """`noise`: [N, 1, r, r] per-pixel noise, or None for the constant buffer."""
        in_resolution = self.resolution // 2 if self.up else self.resolution
        assert_shape(x, (None, self.weight.shape[1], in_resolution, in_resolution), "x")
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter)
        if self.use_noise:
            noise = self.noise_const if noise is None else noise
            x = x + noise * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, lrelu=True, gain=LRELU_GAIN * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to img_channels, no demodulation, bias, clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, lrelu=False, clamp=self.conv_clamp)


class SkipLayer(nn.Module):
    """'resnet' architecture: 1x1 convolution without bias, then FIR up-sampling, gain sqrt(1/2) (Conv2dLayer)."""

    def __init__(self, in_channels: int, out_channels: int, resample_filter: list[float]):
        super().__init__()
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv2d(x, self.weight * self.weight_gain)
        return upsample2d(x, self.resample_filter) * math.sqrt(0.5)


class SynthesisBlock(nn.Module):
    """One resolution: the learned const (4x4) or conv0 (up-sampling), conv1, and toRGB (every block for 'skip',
    the last one otherwise). Takes ws[:, k : k + num_conv + num_torgb]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: list[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, use_noise: bool = True):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture = img_channels, is_last, architecture
        self.half_dtype: torch.dtype | None = None
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        layer = dict(w_dim=w_dim, resolution=resolution, use_noise=use_noise, resample_filter=resample_filter,
                     conv_clamp=conv_clamp)
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=True, **layer)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels, resample_filter)

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Runs in float32, or in `half_dtype` when set (MappedGenerator.set_half_layers)."""
        if self.half_dtype is None and x is not None and x.dtype != torch.float32:
            x = x.to(torch.float32)  # after a block that ran in float16
        return run_in_precision(self.half_dtype, ws.device.type, self._forward, x, img, ws, noise)

    def _forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                 noise: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert_shape(ws, (None, self.num_conv + self.num_torgb, self.w_dim), "ws")
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), noise[0])
        elif self.architecture == "resnet":
            y = self.skip(x)
            x = self.conv0(x, next(w_iter), noise[0])
            x = y + self.conv1(x, next(w_iter), noise[1], gain=math.sqrt(0.5))
        else:
            x = self.conv0(x, next(w_iter), noise[0])
            x = self.conv1(x, next(w_iter), noise[1])
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter)).to(torch.float32)  # the image sum stays float32, as in NVlabs' blocks
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]: blocks b4, b8, ..., bR."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_dim = config.w_dim
        self.block_resolutions = [2**i for i in range(2, config.log2_resolution + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                config.channels(res // 2) if res > 4 else 0, config.channels(res), config.w_dim, res,
                config.img_channels, is_last=res == config.resolution, architecture=config.architecture,
                resample_filter=config.resample_filter, conv_clamp=config.conv_clamp, use_noise=config.use_noise,
            )
            self.num_ws += block.num_conv + (block.num_torgb if res == config.resolution else 0)
            setattr(self, f"b{res}", block)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None, stage: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        """`stage` (default: the last) runs the blocks up to 4 * 2**stage pixels; with alpha < 1 that image fades in
        over the previous stage's, upsampled by nearest neighbour as the trainer fades the real images. Only the
        'skip' architecture, with an image output at every block, can stop early."""
        assert_shape(ws, (None, self.num_ws, self.w_dim), "ws")
        ws = ws.to(torch.float32)
        noise_iter = iter(noise) if noise is not None else None
        blocks = self.blocks()[: None if stage is None else stage + 1]
        x = img = prev = None
        w_idx = 0
        for block in blocks:
            block_noise = [next(noise_iter) if (noise_iter is not None and layer.use_noise) else None
                           for layer in block.layers()]
            prev = img
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), block_noise)
            w_idx += block.num_conv
        if alpha < 1.0 and prev is not None:
            img = fade_in(upsample(prev), img, alpha)
        return img


class MappedGenerator(nn.Module):
    """What the StyleGAN2 and StyleGAN3 generators share: the config, w_avg, mapping z (+ class c) -> ws broadcast to
    num_ws, and the ganserve generator interface around `mapping_net` and `synthesis_net`.

    State dict names follow NVlabs' with `mapping.` -> `mapping_net.`, `synthesis.` -> `synthesis_net.` and
    `mapping.w_avg` -> `w_avg`.
    """

    arch = ""

    def __init__(self, config: ModelConfig, mapping_net: nn.Module, synthesis_net: nn.Module):
        super().__init__()
        if config.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch {self.arch!r}, got {config.arch!r}")
        self.config = config
        self.register_buffer("w_avg", torch.zeros(config.w_dim))
        self.mapping_net = mapping_net
        self.synthesis_net = synthesis_net

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z [N, z_dim] (+ one-hot class c [N, c_dim] for conditional models) -> ws [N, num_ws, w_dim]."""
        return self.mapping_net(z, c).unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z -> image, without truncation or mixing (those live in ganserve.models.latents)."""
        return self.synthesis(self.mapping(z, c))

    @torch.no_grad()
    def estimate_w_avg(self, num_samples: int = 4096, seed: int = 0) -> None:
        """Set w_avg to the mean mapping output of `num_samples` latents (classes drawn uniformly if conditional)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num_samples, self.config.z_dim, generator=g)
        c = None
        if self.config.c_dim:
            labels = torch.randint(self.config.c_dim, (num_samples,), generator=g)
            c = F.one_hot(labels, self.config.c_dim).float()
        self.w_avg.copy_(self.mapping_net(z.to(self.w_avg.device), c).mean(dim=0))

    def half_layers(self) -> list[nn.Module]:
        """The synthesis blocks (StyleGAN2) or layers (StyleGAN3) that the source network ran in float16 (NVlabs'
        `use_fp16`, its num_fp16_res highest resolutions); empty for a network that ran wholly in float32."""
        raise NotImplementedError

    def set_half_layers(self, dtype: torch.dtype | None) -> list[nn.Module]:
        """Run the source's float16 layers in `dtype` (torch.float16 on CUDA as NVlabs does; None: float32 again),
        the others in float32; returns those layers."""
        layers = self.half_layers()
        for layer in layers:
            layer.half_dtype = dtype
        return layers

    def parameter_counts(self) -> dict[str, int]:
        mapping = sum(p.numel() for p in self.mapping_net.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"mapping": mapping, "synthesis": total - mapping, "total": total}


class StyleGAN2Generator(MappedGenerator):
    """The ganserve generator interface over NVlabs' StyleGAN2 layout (see MappedGenerator)."""

    arch = "stylegan2"

    def __init__(self, config: ModelConfig):
        mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim, config.mapping_layers,
                                 config.mapping_lr_mul, config.mapping_layer_features, config.embed_features)
        super().__init__(config, mapping, SynthesisNetwork(config))
        if self.synthesis_net.num_ws != config.num_ws:
            raise ValueError(f"synthesis takes {self.synthesis_net.num_ws} ws, config says {config.num_ws}")

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None, stage: int | None = None,
                  alpha: float = 1.0) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> image [N, C, R, R] in about [-1, 1]. `noise`: one [N, 1, r, r] map per layer
        with noise (noise_resolutions()), or None for the constant buffers. `stage`/`alpha`: the trainer's position
        when it grows the network (`ganserve train --arch stylegan2 --grow`, the 'skip' architecture only)."""
        if self.config.architecture != "skip":
            check_full_resolution(self.config, stage, alpha)
        elif stage is not None and not 0 <= stage <= self.last_stage:
            raise ValueError(f"stage must be in 0..{self.last_stage}, got {stage}")
        if noise is not None and len(noise) != len(self.noise_resolutions()):
            raise ValueError(f"noise has {len(noise)} maps, this model takes {len(self.noise_resolutions())}")
        return self.synthesis_net(ws, noise, stage, alpha)

    @property
    def last_stage(self) -> int:
        """The one stage the network has, in the trainer's numbering (stage s makes 4 * 2**s pixels)."""
        return self.config.num_stages - 1

    def half_layers(self) -> list[SynthesisBlock]:
        blocks = self.synthesis_net.blocks()  # NVlabs: the num_fp16_res highest resolutions, never 4x4
        return [b for b in blocks[len(blocks) - self.config.num_fp16_res:] if b.resolution >= 8] if (
            self.config.num_fp16_res > 0) else []

    def _noise_layers(self) -> list[SynthesisLayer]:
        return [layer for block in self.synthesis_net.blocks() for layer in block.layers() if layer.use_noise]

    def noise_resolutions(self) -> list[int]:
        return [layer.resolution for layer in self._noise_layers()]

    def const_noise(self) -> list[torch.Tensor]:
        return [layer.noise_const.view(1, 1, layer.resolution, layer.resolution) for layer in self._noise_layers()]
