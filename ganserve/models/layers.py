"""Building blocks shared by the ProGAN and StyleGAN networks, named after the papers' terms.

Owns equalized-learning-rate conv/linear, pixel_norm, minibatch_stddev, noise injection, AdaIN, fade_in and resampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
ONEDNN = torch.backends.mkldnn.is_available()


def assert_shape(x: torch.Tensor, shape: tuple[int | None, ...], name: str = "tensor") -> None:
    """Check `x` against `shape`, where None matches any size."""
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def run_in_precision(dtype: torch.dtype | None, device_type: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), under autocast to `dtype` when one is given (a layer its source ran in float16)."""
    if dtype is None:
        return fn(*args, **kwargs)
    with torch.autocast(device_type, dtype=dtype):
        return fn(*args, **kwargs)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each feature vector (dim 1) to unit average square (ProGAN section 4.2)."""
    if x.ndim == 4 and torch.onnx.is_in_onnx_export():
        # The channel mean as a 1x1 convolution: ONNX Runtime's ReduceMean over dim 1 sums in another order for a
        # batch of one than for larger batches, its convolution does not.
        c = x.shape[1]
        mean = F.conv2d(x.square(), torch.full((1, c, 1, 1), 1.0 / c, dtype=x.dtype, device=x.device))
        return x * torch.rsqrt(mean + eps)
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0,
           groups: int = 1) -> torch.Tensor:
    """F.conv2d (stride 1) computed, for float32 on the CPU, so that an image's result does not depend on the batch
    it is in or on the thread count.

    F.conv2d picks its CPU kernel by shape and threads: a 1x1 convolution (toRGB) runs on PyTorch's own GEMM path
    below 16 images with one thread and on oneDNN otherwise, and any convolution of a single image runs on the
    former; the two round differently. Here a 1x1 convolution is one [out, in] x [in, H*W] product per image (as
    fast as PyTorch's path, where oneDNN is slow on 3 output channels; a lone image is run as two rows, since bmm
    gives a single small product to multi-threaded GEMM) and every other convolution runs on oneDNN;
    both give the same bits at every batch size, 1 included, and thread count (tests/test_same_pixels.py). ONNX
    export, torch.compile, autocast and other devices keep F.conv2d.
    """
    if (not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export() and x.device.type == "cpu"
            and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
        if weight.shape[-2:] == (1, 1) and groups == 1 and padding == 0:
            if len(x) == 1:  # bmm hands a lone small product to multi-threaded GEMM, which rounds otherwise
                return conv2d(x.expand(2, -1, -1, -1), weight, bias)[:1]
            n, c, h, w = x.shape
            y = torch.bmm(weight.reshape(-1, c).expand(n, -1, -1), x.reshape(n, c, h * w)).view(n, -1, h, w)
            return y if bias is None else y + bias.view(1, -1, 1, 1)
        if ONEDNN:
            return torch.mkldnn_convolution(x, weight, bias, [padding, padding], [1, 1], [1, 1], groups)
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)


class EqualizedLinear(nn.Module):
    """Dense layer with equalized_lr: weights stored as N(0, 1/lr_mul), scaled by gain/sqrt(fan_in) at run time."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        gain: float = LRELU_GAIN,
        lr_mul: float = 1.0,
        bias: bool = True,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One [1, in] x [in, out] product per sample (bmm over an expanded weight) rather than one GEMM over the
        # batch: BLAS picks different kernels, with different rounding, for different batch sizes, and an image
        # must not depend on which other requests share its batch.
        w = (self.weight * self.weight_gain).t()
        y = torch.bmm(x.unsqueeze(1), w.unsqueeze(0).expand(x.shape[0], -1, -1)).squeeze(1)
        return y + self.bias * self.lr_mul if self.bias is not None else y


class EqualizedConv2d(nn.Module):
    """Convolution with equalized_lr and 'same' padding."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, gain: float = LRELU_GAIN, bias: bool = True
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


class Blur(nn.Module):
    """Fixed [1, 2, 1] binomial low-pass filter applied per channel (StyleGAN's blur around resampling)."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return conv2d(x, self.kernel.expand(c, 1, 3, 3), padding=1, groups=c)


def upsample_conv(x: torch.Tensor, conv: EqualizedConv2d, mode: str = "nearest") -> torch.Tensor:
    """conv(upsample(x, mode)) for a 3x3 `conv`.

    In an ONNX export with nearest upsampling it is one transposed convolution of stride 2 instead: each output pixel
    of the upsampled convolution reads only 2x2 distinct input pixels, so its 3x3 kernel folds into a 4x4 one (the
    taps that read the same pixel summed, in float64 and rounded once) that makes 4 products per output where the
    upsampled copy took 9. ONNX Runtime on the CPU runs these layers in about two thirds of the time
    (benchmarks/README.md, Roofline); the pixels stay within the export's check against eager PyTorch, which keeps
    computing it the plain way.
    """
    if mode == "nearest" and conv.weight.shape[-1] == 3 and torch.onnx.is_in_onnx_export():
        return F.conv_transpose2d(x, upsample_kernel(conv.weight * conv.weight_gain), conv.bias, stride=2, padding=1)
    return conv(upsample(x, mode))


def upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The [in, out, 4, 4] kernel of a stride-2 transposed convolution equal to 2x nearest upsampling followed by a 3x3
    convolution with `weight` [out, in, 3, 3] and padding 1: along each axis taps (k2, k1 + k2, k0 + k1, k0)."""
    k = weight.double().flip(-1, -2)
    k = F.pad(k, (0, 1)) + F.pad(k, (1, 0))
    k = F.pad(k, (0, 0, 0, 1)) + F.pad(k, (0, 0, 1, 0))
    return k.transpose(0, 1).to(weight.dtype)


# Phase maps: a feature map X [N, C, 2H, 2W] as its four sub-grids X[:, :, a::2, b::2] [N, C, H, W], in the order
# (a, b) = (0, 0), (0, 1), (1, 0), (1, 1). A 3x3 convolution of X, or of X upsampled (nearest), is then a sum of
# smaller convolutions of the phases, whose kernels sum the 3x3 taps that read the same pixel (below, per axis: for
# output phase a, which taps each kernel row sums), with the same products as the folded transposed convolution.
_UPSAMPLED_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}  # output row 2i+a of conv(upsample(x)) reads x rows i+a-1, i+a
_SAME_TAPS = {(0, 0): ((1,),), (0, 1): ((0,), (2,)), (1, 0): ((0,), (2,)), (1, 1): ((1,),)}  # (output, input) phase
_SAME_PADS = {(0, 0): (0, 0), (0, 1): (1, 0), (1, 0): (0, 1), (1, 1): (0, 0)}  # rows before, after


def _phase_kernel(weight: torch.Tensor, rows: tuple, cols: tuple) -> torch.Tensor:
    """[out, in, len(rows), len(cols)]: each tap the sum of the 3x3 `weight` taps it stands for (in float64, rounded
    once, as upsample_kernel)."""
    k = weight.double()
    k = torch.stack([sum(k[:, :, t] for t in taps) for taps in rows], 2)
    return torch.stack([sum(k[:, :, :, u] for u in taps) for taps in cols], 3).to(weight.dtype)


def _padded_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pads: tuple) -> torch.Tensor:
    """F.conv2d with (left, right, top, bottom) zero padding (no Pad node where there is none)."""
    return F.conv2d(F.pad(x, pads) if any(pads) else x, weight, bias)


def upsample_conv_phases(x: torch.Tensor, conv: EqualizedConv2d) -> list[torch.Tensor]:
    """The four phase maps of conv(upsample(x, "nearest")) for a 3x3 `conv`: four 2x2 convolutions of x."""
    w = conv.weight * conv.weight_gain
    return [_padded_conv(x, _phase_kernel(w, _UPSAMPLED_TAPS[a], _UPSAMPLED_TAPS[b]), conv.bias, (1 - b, b, 1 - a, a))
            for a in (0, 1) for b in (0, 1)]


def conv_phases(phases: list[torch.Tensor], conv: EqualizedConv2d) -> list[torch.Tensor]:
    """The phase maps of conv(X) for a 3x3 `conv`, given X's: each a sum of four convolutions (1x1, 1x2, 2x1, 2x2),
    as many products as the 3x3 one. The 1x1 term comes first and carries the bias: at the end of the sum ONNX Runtime
    fuses it with the addition into a convolution outside its blocked layout."""
    w = conv.weight * conv.weight_gain
    out = []
    for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
        terms = sorted(((p, q) for p in (0, 1) for q in (0, 1)),
                       key=lambda pq: len(_SAME_TAPS[a, pq[0]]) * len(_SAME_TAPS[b, pq[1]]))
        y = None
        for p, q in terms:
            kernel = _phase_kernel(w, _SAME_TAPS[a, p], _SAME_TAPS[b, q])
            term = _padded_conv(phases[2 * p + q], kernel, conv.bias if y is None else None,
                                _SAME_PADS[b, q] + _SAME_PADS[a, p])
            y = term if y is None else y + term
        out.append(y)
    return out


def interleave_phases(phases: list[torch.Tensor]) -> torch.Tensor:
    """[N, C, 2H, 2W] from its four phase maps."""
    n, c, h, w = phases[0].shape
    rows = [torch.stack(phases[2 * a:2 * a + 2], -1).reshape(n, c, h, 2 * w) for a in (0, 1)]
    return torch.stack(rows, 3).reshape(n, c, 2 * h, 2 * w)


def upsample(x: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """2x up sampling, 'nearest' (the papers' choice) or 'bilinear'."""
    if mode == "nearest" and torch.onnx.is_in_onnx_export():
        return F.interpolate(x, scale_factor=2.0, mode="nearest")  # one Resize node: ONNX Runtime runs it fastest
    if mode == "nearest":
        # Each value copied into a 2x2 block by two broadcasts: the same numbers as F.interpolate(mode="nearest"),
        # without eager PyTorch's slower nearest-neighbour kernel on the CPU.
        n, c, h, w = x.shape
        x = x.unsqueeze(-1).expand(n, c, h, w, 2).reshape(n, c, h, 2 * w)
        return x.unsqueeze(-2).expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)
    return F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)


def downsample(x: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """2x down sampling: 2x2 average pooling ('nearest' box filter) or 'bilinear' (antialiased)."""
    if mode == "nearest":
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, scale_factor=0.5, mode=mode, align_corners=False, antialias=True)


def fade_in(old: torch.Tensor, new: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Blend the previous stage's output into the new stage's: alpha=0 gives `old`, alpha=1 gives `new`."""
    return old + (new - old) * alpha


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_features: int = 1) -> torch.Tensor:
    """Append the standard deviation across groups of samples as extra feature maps (ProGAN section 3).

    The group is the largest divisor of the batch size not above `group_size`, so any batch size works.
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    f = num_features
    y = x.reshape(g, -1, f, c // f, h, w)  # [G, M, F, c, H, W]
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [M, F, c, H, W]
    y = y.mean(dim=(2, 3, 4))  # [M, F]
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)


class NoiseInjection(nn.Module):
    """Add per-pixel noise scaled by a learned per-channel strength (StyleGAN section 3.2).

    A fixed noise map is kept as a buffer (saved with the weights) for `noise=const`; a caller may pass its own.
    """

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = self.noise_const
        return x + noise * self.strength.view(1, -1, 1, 1)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: instance-normalise x, then scale and shift it by an affine map of w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.style = EqualizedLinear(w_dim, 2 * channels, gain=1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        if torch.onnx.is_in_onnx_export():
            # The rest as one InstanceNormalization node over the batch's images folded into its channels, with each
            # image's style as the per-channel scale and shift: one pass where the plain way takes seven ONNX nodes
            # (benchmarks/README.md, Roofline). Centring first, as the plain way does, keeps the node's variance
            # that of eager PyTorch on the flat feature maps of an untrained model (without it only 96.8% of such a
            # model's pixels agreed). Eager PyTorch keeps the plain way.
            n, c, h, wd = x.shape
            style = self.style(w).view(-1, 2, self.channels)
            y = F.instance_norm(x.reshape(1, n * c, h, wd), weight=(style[:, 0] + 1).reshape(-1),
                                bias=style[:, 1].reshape(-1), eps=1e-8)
            return y.view(n, c, h, wd)
        x = x * torch.rsqrt(x.square().mean(dim=(2, 3), keepdim=True) + 1e-8)
        style = self.style(w).view(-1, 2, self.channels, 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


