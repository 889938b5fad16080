import math

import pytest
import torch
import torch.nn.functional as F

from ganserve.models.layers import (
    AdaIN,
    EqualizedConv2d,
    EqualizedLinear,
    NoiseInjection,
    conv_phases,
    downsample,
    fade_in,
    interleave_phases,
    minibatch_stddev,
    pixel_norm,
    upsample,
    upsample_conv,
    upsample_conv_phases,
    upsample_kernel,
)


def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = torch.randn(4, 16, 5, 5) * 7
    y = pixel_norm(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(4, 5, 5), rtol=1e-4, atol=1e-4)


def test_equalized_lr_scales_weights_at_run_time():
    layer = EqualizedLinear(64, 8, gain=math.sqrt(2), lr_mul=0.01)
    # stored weights are N(0, 1/lr_mul); the effective weights have std gain / sqrt(fan_in)
    assert layer.weight.std().item() == pytest.approx(100, rel=0.1)
    x = torch.randn(3, 64)
    expected = x @ (layer.weight * math.sqrt(2) / 8 * 0.01).t() + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected)
    conv = EqualizedConv2d(4, 6, 3)
    assert conv.weight_gain == pytest.approx(math.sqrt(2) / math.sqrt(36))
    assert conv(torch.randn(2, 4, 8, 8)).shape == (2, 6, 8, 8)


def test_equalized_linear_is_batch_invariant():
    layer = EqualizedLinear(128, 96)
    x = torch.randn(20, 128)
    full = layer(x)
    for n in (1, 3, 8):
        assert torch.equal(full[:n], layer(x[:n]))


def test_minibatch_stddev_appends_the_group_deviation():
    x = torch.randn(8, 6, 4, 4)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (8, 7, 4, 4)
    torch.testing.assert_close(y[:, :6], x)
    # groups are samples i, i+2, i+4, i+6 (strided, as in the reference); check group 0 by hand
    group = x[0::2]
    expected = group.std(dim=0, unbiased=False).mean()
    torch.testing.assert_close(y[0, 6, 0, 0], expected, rtol=1e-4, atol=1e-4)
    assert minibatch_stddev(torch.randn(5, 6, 4, 4), group_size=4).shape == (5, 7, 4, 4)  # odd batch


def test_fade_in_blends_between_stages():
    old, new = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(fade_in(old, new, 0.0), old)
    assert torch.equal(fade_in(old, new, 1.0), new)
    torch.testing.assert_close(fade_in(old, new, 0.25), torch.full((2, 3), 0.25))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resampling_doubles_and_halves(mode):
    x = torch.randn(2, 3, 8, 8)
    assert upsample(x, mode).shape == (2, 3, 16, 16)
    assert downsample(x, mode).shape == (2, 3, 4, 4)
    # a constant image stays constant
    c = torch.full((1, 1, 8, 8), 0.5)
    torch.testing.assert_close(downsample(upsample(c, mode), mode), c)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (4, 48, 32, 32), (2, 5, 3, 7)])
def test_nearest_upsampling_is_interpolate_exactly_forward_and_backward(shape):
    """The broadcast copy that replaces F.interpolate(mode="nearest") must not change a single bit: bundled
    weights, seeds and exported graphs (which keep the Resize node) all assume the same numbers."""
    x = torch.randn(shape, requires_grad=True)
    y = upsample(x, "nearest")
    reference = F.interpolate(x, scale_factor=2.0, mode="nearest")
    assert torch.equal(y, reference)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    (reference_grad,) = torch.autograd.grad(reference, x, g)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-6)  # sums of the same four values

@pytest.mark.parametrize("bias", [False, True])
def test_phase_maps_compute_the_upsampled_and_the_plain_3x3_convolution(bias):
    torch.manual_seed(1)
    up, same = EqualizedConv2d(5, 7, 3, bias=bias), EqualizedConv2d(7, 6, 3, bias=bias)
    if bias:
        torch.nn.init.normal_(up.bias)
        torch.nn.init.normal_(same.bias)
    x = torch.randn(3, 5, 6, 4)
    with torch.no_grad():
        upsampled = up(upsample(x))
        phases = upsample_conv_phases(x, up)
        assert [tuple(p.shape) for p in phases] == [(3, 7, 6, 4)] * 4
        # in the order (0, 0), (0, 1), (1, 0), (1, 1)
        torch.testing.assert_close(phases[2], upsampled[:, :, 1::2, 0::2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(interleave_phases(phases), upsampled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(interleave_phases(conv_phases(phases, same)), same(upsampled), rtol=1e-5,
                                   atol=1e-5)
        assert torch.equal(interleave_phases([upsampled[:, :, a::2, b::2] for a in (0, 1) for b in (0, 1)]), upsampled)


@pytest.mark.parametrize("bias", [False, True])
def test_the_folded_upsample_kernel_is_nearest_upsampling_then_the_3x3_convolution(bias):
    torch.manual_seed(0)
    conv = EqualizedConv2d(5, 7, 3, bias=bias)
    if bias:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(3, 5, 6, 4)
    plain = conv(upsample(x))
    folded = F.conv_transpose2d(x, upsample_kernel(conv.weight * conv.weight_gain), conv.bias, stride=2, padding=1)
    assert folded.shape == plain.shape == (3, 7, 12, 8)
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    # the kernel's taps along one axis: (k2, k1 + k2, k0 + k1, k0)
    w = torch.arange(9.0).view(1, 1, 3, 3)
    assert upsample_kernel(w)[0, 0, 0].tolist() == [8.0, 15.0, 13.0, 6.0]
    assert torch.equal(upsample_conv(x, conv), plain)  # outside an ONNX export: the plain way, the same bits


def test_adain_sets_per_channel_statistics_from_w():
    adain = AdaIN(channels=5, w_dim=4)
    x = torch.randn(2, 5, 6, 6) * 3 + 2
    w = torch.randn(2, 4)
    y = adain(x, w)
    style = adain.style(w).view(2, 2, 5)
    torch.testing.assert_close(y.mean(dim=(2, 3)), style[:, 1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), (style[:, 0] + 1).abs(), rtol=1e-3, atol=1e-3)


def test_noise_injection_uses_learned_per_channel_strength():
    layer = NoiseInjection(3, 4)
    x = torch.zeros(1, 3, 4, 4)
    assert torch.equal(layer(x), x)  # strength starts at zero
    with torch.no_grad():
        layer.strength.copy_(torch.tensor([0.0, 1.0, 2.0]))
    noise = torch.randn(1, 1, 4, 4)
    y = layer(x, noise)
    torch.testing.assert_close(y[0, 2], 2 * noise[0, 0])
    torch.testing.assert_close(layer(x)[0, 1], layer.noise_const[0, 0])
