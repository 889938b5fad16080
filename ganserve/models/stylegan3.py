"""The StyleGAN3 generator (Karras et al. 2021, "Alias-Free Generative Adversarial Networks"), configs T and R, laid
out as NVlabs' stylegan3 networks_stylegan3.py so that its network pickles import by name (ganserve.models.importers).

MappingNetwork z -> w (as StyleGAN2's); SynthesisInput: Fourier features rotated/translated by an affine of w and the
user `transform`; SynthesisLayers: modulated conv (non-fused) and filtered leaky ReLU (zero-insertion up-sampling,
fixed FIR filters, bias/lrelu/gain/clamp, down-sampling), the last one a ToRGB. No noise inputs. Plain PyTorch,
independent of the batch on the CPU: every convolution goes through ganserve.models.layers.conv2d.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.latents import image_transform
from ganserve.models.layers import LRELU_SLOPE, assert_shape, conv2d, run_in_precision
from ganserve.models.stylegan2 import FullyConnectedLayer, MappedGenerator, MappingNetwork

# -- filter design (new models only: imported ones keep the filters stored in the pickle) -------------------------


def _kaiser_beta(atten: float) -> float:
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """NVlabs' SynthesisLayer.design_lowpass_filter without scipy: a separable Kaiser-windowed sinc low-pass
    (scipy.signal.firwin with `width`) as 1D taps, or a radially symmetric jinc-based 2D filter; None for 1 tap."""
    if numtaps == 1:
        return None
    beta = _kaiser_beta(2.285 * (numtaps - 1) * np.pi * (width / (fs / 2)) + 7.95)
    window = np.kaiser(numtaps, beta)
    if not radial:
        c = cutoff / (fs / 2)
        m = np.arange(numtaps) - (numtaps - 1) / 2
        h = c * np.sinc(c * m) * window
        return torch.as_tensor(h / h.sum(), dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = torch.as_tensor(np.hypot(*np.meshgrid(x, x)), dtype=torch.float64, device="cpu")  # also under a meta device
    f = (torch.special.bessel_j1(2 * cutoff * (np.pi * r)) / (np.pi * r)).numpy()
    f = f * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


# -- ops ----------------------------------------------------------------------------------------------------------


def fir_conv(x: torch.Tensor, f: torch.Tensor, gain: float, down: int = 1) -> torch.Tensor:
    """Each channel convolved ('valid', a true convolution) with FIR filter `f` scaled by `gain`, then every
    `down`-th sample kept (upfirdn2d's reference order). A 1D `f` is separable: along the width, then the height,
    each with gain**0.5."""
    c = x.shape[1]
    k = f.flip(list(range(f.ndim))).to(x.dtype)
    if f.ndim == 2:
        x = conv2d(x, (k * gain)[None, None].expand(c, 1, -1, -1), groups=c)
        return x[:, :, ::down, ::down].contiguous() if down > 1 else x
    k = k * gain ** 0.5
    x = conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    if down > 1:
        x = x[:, :, :, ::down].contiguous()  # the samples that down-sampling after both passes keeps, half the work
    x = conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    # contiguous: oneDNN rounds differently for strided inputs, and the next layer's result must not depend on it
    return x[:, :, ::down, :].contiguous() if down > 1 else x


def pad_or_crop(x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """Zero-pad [x0, x1, y0, y1] (negative values crop), as upfirdn2d does."""
    x0, x1, y0, y1 = padding
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    if min(padding) >= 0:
        return x
    return x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)].contiguous()


def zero_insert(x: torch.Tensor, up: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, up*H, up*W], x at multiples of `up`, zeros elsewhere (the 'up' of upfirdn2d)."""
    if up == 1:
        return x
    _, c, h, w = x.shape
    x = F.pad(x.reshape(-1, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
    return x.reshape(-1, c, h * up, w * up)


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None, bias: torch.Tensor, up: int,
                   down: int, padding: list[int], gain: float, slope: float, clamp: float | None) -> torch.Tensor:
    """NVlabs' filtered_lrelu with the semantics of its reference path: bias, up-sample by `up` (zero insertion,
    padding, FIR `fu` with gain up**2), leaky ReLU with `slope` times `gain`, clamp, FIR `fd` and keep every
    `down`-th sample. Leaky ReLU at twice the rate between the filters is what keeps it alias-free."""
    x = x + bias.to(x.dtype).view(1, -1, 1, 1)
    x = pad_or_crop(zero_insert(x, up), padding)
    if fu is not None:
        x = fir_conv(x, fu, gain=float(up**2))
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    if fd is not None:
        x = fir_conv(x, fd, gain=1.0, down=down)
    elif down > 1:
        x = x[:, :, ::down, ::down]
    return x.contiguous()


def conv2d_any_batch(x: torch.Tensor, weight: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """layers.conv2d, with a single image's 1x1 convolution run as a batch of two: layers.conv2d's per-image bmm
    takes another kernel for one image than for several at some channel counts (e.g. 13 -> 11, StyleGAN3 R's
    narrow layers), and an image must not depend on its batch."""
    if x.shape[0] == 1 and weight.shape[-2:] == (1, 1) and not torch.onnx.is_in_onnx_export():
        return conv2d(x.expand(2, -1, -1, -1), weight, padding=padding)[:1]
    return conv2d(x, weight, padding=padding)


def rowwise_matmul(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [N, I] @ m [I, O] as a broadcast product summed over I: each row's sum runs in the same order at every batch
    size (a bmm over an expanded matrix does not, for sizes such as StyleGAN3's 23 or 29 channels)."""
    return (x.unsqueeze(1) * m.t().unsqueeze(0)).sum(dim=2)


class Affine(FullyConnectedLayer):
    """The w -> styles dense layer of StyleGAN3's layers (a FullyConnectedLayer) through rowwise_matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rowwise_matmul(x, (self.weight * self.weight_gain).t()) + self.bias * self.lr_mul


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, padding: int,
                     input_gain: torch.Tensor) -> torch.Tensor:
    """StyleGAN3's modulated convolution, NOT fused: scale the input activations by styles * input_gain, convolve
    with the shared weight, then multiply each output channel by the sample's demodulation coefficient.

    With `demodulate`, weights and styles are first normalised to unit RMS as NVlabs does; NVlabs normalises the
    styles by their RMS over the whole batch, here per sample, so that an image does not depend on its batch. The
    demodulation cancels any per-sample scale of the styles, so only rounding differs.
    """
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(x, (None, in_channels, None, None), "x")
    assert_shape(styles, (n, in_channels), "styles")
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    x = x * (styles * input_gain).to(x.dtype).reshape(n, -1, 1, 1)
    x = conv2d_any_batch(x, weight.to(x.dtype), padding=padding)
    if not demodulate:
        return x
    dcoefs = (rowwise_matmul(styles.square(), weight.square().sum(dim=[2, 3]).t()) + 1e-8).rsqrt()  # [N, O]
    return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)


# -- layers -------------------------------------------------------------------------------------------------------


class SynthesisInput(nn.Module):
    """w -> Fourier features [N, channels, size, size]: fixed random frequencies and phases within `bandwidth`,
    rotated and translated by an affine of w (then by the user `transform`), sampled on the pixel grid of the
    `sampling_rate`, mixed by a learned channels x channels weight."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, size
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = Affine(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3, 3))  # user-specified inverse transform of the image
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand([channels]) - 0.5)
        theta = torch.tensor([[0.5 * size / sampling_rate, 0, 0], [0, 0.5 * size / sampling_rate, 0]])
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, size, size], align_corners=False)  # [1, H, W, 2]
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        """`transform`: an optional per-image inverse transform [N, 3, 3] (see image_transform) applied on top of
        the stored one; identity rows leave an image bit for bit as without it."""
        assert_shape(w, (None, self.w_dim), "w")
        n = w.shape[0]
        # t = (r_c, r_s, t_x, t_y) from w, the rotation part normalised: the inverse rotation and translation of the
        # image, composed as rotation @ translation @ user transform. Written out per element (2x2 and 2x1 parts),
        # so that each image's numbers are computed alone whatever the batch.
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        c, s, tx, ty = t.unbind(dim=1)  # [N] each
        u = self.transform.to(w.dtype).unsqueeze(0)  # [1, 3, 3]
        if transform is not None:
            assert_shape(transform, (n, 3, 3), "transform")
            u = (transform.to(w.dtype).unsqueeze(-1) * u.unsqueeze(1)).sum(dim=2)  # [N, 3, 3]: transform @ stored
        # m = m_r @ m_t @ u with m_r = [[c, -s, 0], [s, c, 0], [0, 0, 1]], m_t = [[1, 0, -tx], [0, 1, -ty], [0, 0, 1]]
        rt = torch.stack([torch.stack([c, -s, -c * tx + s * ty], dim=1),
                          torch.stack([s, c, -s * tx - c * ty], dim=1)], dim=1)  # [N, 2, 3] (the last row is 0 0 1)
        m = rt[:, :, :2].unsqueeze(-1) * u[:, :2, :].unsqueeze(1)
        m = m.sum(dim=2) + rt[:, :, 2:] * u[:, 2, :].unsqueeze(1)  # [N, 2, 3]
        fx, fy = self.freqs[:, 0].view(1, -1), self.freqs[:, 1].view(1, -1)  # [1, C]
        phases = self.phases.view(1, -1) + fx * m[:, 0, 2:] + fy * m[:, 1, 2:]  # [N, C]
        freqs_x = fx * m[:, 0, 0:1] + fy * m[:, 1, 0:1]  # [N, C]: freqs @ m[:2, :2]
        freqs_y = fx * m[:, 0, 1:2] + fy * m[:, 1, 1:2]
        # Dampen out-of-band frequencies that the user transform may introduce.
        norm = (freqs_x.square() + freqs_y.square()).sqrt()
        amplitudes = (1 - (norm - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        gx, gy = self.grid[..., 0].unsqueeze(1), self.grid[..., 1].unsqueeze(1)  # [1, 1, H, W]
        x = gx * freqs_x.view(n, -1, 1, 1) + gy * freqs_y.view(n, -1, 1, 1) + phases.view(n, -1, 1, 1)
        x = torch.sin(x * (np.pi * 2)) * amplitudes.view(n, -1, 1, 1)  # [N, C, H, W]
        weight = self.weight / np.sqrt(self.channels)
        return conv2d_any_batch(x, weight.view(self.channels, self.channels, 1, 1))


class SynthesisLayer(nn.Module):
    """Modulated conv (kernel 3, or 1 in config R and for ToRGB) + filtered leaky ReLU between sampling rates.

    Every constant comes from `spec` (one entry of ModelConfig.sg3_layers, NVlabs' attribute names); the filters
    are buffers (`up_filter`, `down_filter`), the input magnitude EMA is `magnitude_ema` (its rsqrt is the input
    gain, as in NVlabs' inference)."""

    def __init__(self, w_dim: int, spec: dict, conv_clamp: float | None):
        super().__init__()
        self.w_dim, self.conv_clamp = w_dim, conv_clamp
        self.is_torgb = bool(spec["is_torgb"])
        self.use_fp16 = bool(spec.get("use_fp16", False))  # as the source ran it; see MappedGenerator.set_half_layers
        self.half_dtype: torch.dtype | None = None
        self.in_channels, self.out_channels = spec["in_channels"], spec["out_channels"]
        self.in_size, self.out_size = spec["in_size"], spec["out_size"]
        self.conv_kernel, self.up_factor, self.down_factor = spec["conv_kernel"], spec["up_factor"], spec["down_factor"]
        self.padding = list(spec["padding"])
        self.affine = Affine(w_dim, self.in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([self.out_channels, self.in_channels, self.conv_kernel,
                                                self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))
        up = design_lowpass_filter(spec["up_taps"], spec["in_cutoff"], spec["in_half_width"] * 2,
                                   spec["in_sampling_rate"] * self.up_factor)
        down = design_lowpass_filter(spec["down_taps"], spec["out_cutoff"], spec["out_half_width"] * 2,
                                     spec["out_sampling_rate"] * self.down_factor, radial=bool(spec["down_radial"]))
        self.register_buffer("up_filter", up)  # None (no buffer) for an identity filter, as in NVlabs' layers
        self.register_buffer("down_filter", down)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.half_dtype is None and x.dtype != torch.float32:
            x = x.to(torch.float32)  # after a layer that ran in float16
        return run_in_precision(self.half_dtype, x.device.type, self._forward, x, w)

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        assert_shape(x, (None, self.in_channels, self.in_size, self.in_size), "x")
        assert_shape(w, (x.shape[0], self.w_dim), "w")
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb, padding=self.conv_kernel - 1,
                             input_gain=self.magnitude_ema.rsqrt())
        x = filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up_factor, self.down_factor,
                           self.padding, gain=1.0 if self.is_torgb else math.sqrt(2),
                           slope=1.0 if self.is_torgb else LRELU_SLOPE, clamp=self.conv_clamp)
        assert_shape(x, (None, self.out_channels, self.out_size, self.out_size), "output")
        return x


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]: ws[:, 0] drives the input, ws[:, i + 1] layer i;
    the result is scaled by `output_scale`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_dim, self.num_ws, self.output_scale = config.w_dim, config.num_ws, config.output_scale
        self.input = SynthesisInput(config.w_dim, **config.sg3_input)
        self.layer_names = []
        for spec in config.sg3_layers:
            setattr(self, spec["name"], SynthesisLayer(config.w_dim, spec, config.conv_clamp))
            self.layer_names.append(spec["name"])

    def layers(self) -> list[SynthesisLayer]:
        return [getattr(self, name) for name in self.layer_names]

    def forward(self, ws: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        assert_shape(ws, (None, self.num_ws, self.w_dim), "ws")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0], transform)
        for layer, w in zip(self.layers(), ws[1:]):
            x = layer(x, w)
        x = x.to(torch.float32) if x.dtype != torch.float32 else x  # the last layers may run in float16
        return x * self.output_scale if self.output_scale != 1 else x


class StyleGAN3Generator(MappedGenerator):
    """The ganserve generator interface over NVlabs' StyleGAN3 layout (see MappedGenerator). No noise inputs."""

    arch = "stylegan3"

    def __init__(self, config: ModelConfig):
        mapping = MappingNetwork(config.z_dim, config.c_dim, config.w_dim, config.mapping_layers, config.mapping_lr_mul)
        super().__init__(config, mapping, SynthesisNetwork(config))

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None,
                  transform: torch.Tensor | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> image [N, C, R, R] in about [-1, 1]. StyleGAN3 has no noise inputs: `noise`
        must be None or empty. `transform`: per-image rotation/translation [N, 3, 3] (image_transform), or None."""
        if noise:
            raise ValueError(f"StyleGAN3 has no noise inputs, got {len(noise)} noise maps")
        return self.synthesis_net(ws, transform)

    def noise_resolutions(self) -> list[int]:
        return []

    def const_noise(self) -> list[torch.Tensor]:
        return []

    def half_layers(self) -> list[SynthesisLayer]:
        return [layer for layer in self.synthesis_net.layers() if layer.use_fp16]

    def set_transform(self, angle: float = 0.0, translate: tuple[float, float] = (0.0, 0.0)) -> None:
        """Rotate the generated images by `angle` degrees and translate them by `translate` (in units of the image,
        as NVlabs' gen_images.py --rotate/--translate): sets the input's user transform to the inverse of
        make_transform(translate, angle)."""
        self.synthesis_net.input.transform.copy_(torch.from_numpy(image_transform(angle, translate)))
