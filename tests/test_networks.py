import pytest
import torch
from conftest import tiny_config, tiny_generator

from ganserve.models import ModelConfig, build_discriminator, build_generator
from ganserve.models.layers import upsample


def _counts(arch: str, **kw) -> dict[str, int]:
    with torch.device("meta"):
        return build_generator(ModelConfig(arch=arch, **kw)).parameter_counts()


def test_paper_configurations_match_published_parameter_counts_exactly():
    # NVlabs' StyleGAN FFHQ 1024 generator: 26,219,627 exactly (the README's table); ProGAN paper table 2: about
    # 23.08 M (with every toRGB), 23,079,115 here. Exact: a missing per-layer bias (StyleGAN: 5,000 parameters in
    # all) or toRGB is far inside any relative tolerance.
    assert _counts("stylegan", resolution=1024) == {"mapping": 2_101_248, "synthesis": 24_118_379, "total": 26_219_627}
    assert _counts("progan", resolution=1024) == {"mapping": 4_194_816, "synthesis": 18_884_299, "total": 23_079_115}


def test_stylegan_mapping_network_has_eight_layers_at_lr_mul_001():
    with torch.device("meta"):
        G = build_generator(ModelConfig(arch="stylegan", resolution=64))
    assert len(G.mapping_net.layers) == 8
    assert all(layer.lr_mul == 0.01 for layer in G.mapping_net.layers)
    assert G.parameter_counts()["mapping"] == 8 * (512 * 512 + 512)


@pytest.mark.parametrize("resolution", [4, 8, 32])
@pytest.mark.parametrize("img_channels", [1, 3])
def test_generator_and_discriminator_shapes_at_any_resolution(arch, resolution, img_channels):
    config = tiny_config(arch, resolution=resolution, img_channels=img_channels)
    G, D = build_generator(config), build_discriminator(config)
    z = torch.randn(3, config.z_dim)
    ws = G.mapping(z)
    assert ws.shape == (3, config.num_ws, config.w_dim)
    img = G.synthesis(ws)
    assert img.shape == (3, img_channels, resolution, resolution)
    assert D(img).shape == (3,)
    for stage in range(config.num_stages):
        r = 4 * 2**stage
        assert G(z, stage=stage, alpha=0.5).shape == (3, img_channels, r, r)
        assert D(torch.randn(3, img_channels, r, r), stage=stage, alpha=0.5).shape == (3,)


def test_num_ws_follows_resolution():
    assert ModelConfig(arch="stylegan", resolution=1024).num_ws == 18
    assert ModelConfig(arch="stylegan", resolution=64).num_ws == 10
    assert ModelConfig(arch="progan", resolution=64).num_ws == 1


@pytest.mark.parametrize("bad", [dict(resolution=3), dict(resolution=2048), dict(resolution=48), dict(arch="gan"),
                                 dict(img_channels=2), dict(z_dim=0)])
def test_bad_configurations_are_refused_with_the_field_named(bad):
    with pytest.raises(ValueError) as e:
        ModelConfig(**{"arch": "stylegan", "resolution": 16, **bad})
    assert next(iter(bad)) in str(e.value)


def test_fade_in_alpha_one_is_the_grown_network_and_alpha_zero_the_upsampled_previous_stage(arch):
    G = tiny_generator(arch, resolution=32)
    ws = G.mapping(torch.randn(4, G.config.z_dim))
    for stage in (1, 2, 3):
        grown = G.synthesis(ws, stage=stage)
        assert torch.equal(G.synthesis(ws, stage=stage, alpha=1.0), grown)
        previous = upsample(G.synthesis(ws, stage=stage - 1))
        assert torch.equal(G.synthesis(ws, stage=stage, alpha=0.0), previous)
        half = G.synthesis(ws, stage=stage, alpha=0.5)
        torch.testing.assert_close(half, (grown + previous) / 2, rtol=1e-5, atol=1e-5)
    assert torch.equal(G.synthesis(ws), G.synthesis(ws, stage=G.last_stage))


def test_discriminator_fade_in_alpha_zero_sees_the_downsampled_image(arch):
    config = tiny_config(arch, resolution=32)
    torch.manual_seed(0)
    D = build_discriminator(config)
    img = torch.randn(4, 3, 16, 16)
    big = upsample(img)  # its 2x2 average pooling is `img` again
    torch.testing.assert_close(D(big, stage=3, alpha=0.0), D(img, stage=2, alpha=1.0))
    assert not torch.allclose(D(big, stage=3, alpha=1.0), D(img, stage=2, alpha=1.0))


def test_stage_out_of_range_is_an_error(arch):
    G = tiny_generator(arch)
    with pytest.raises(ValueError, match="stage"):
        G.synthesis(G.mapping(torch.randn(1, 32)), stage=9)


def test_gradients_reach_every_parameter_used_at_the_full_resolution(arch):
    config = tiny_config(arch, resolution=8)
    torch.manual_seed(0)
    G, D = build_generator(config), build_discriminator(config)
    z = torch.randn(8, config.z_dim)
    loss = D(G(z)).mean()
    loss.backward()
    last = str(config.num_stages - 1)
    for net, rgb in ((G, "to_rgb."), (D, "from_rgb.")):
        used = [n for n, _ in net.named_parameters() if not n.startswith(rgb) or n.startswith(rgb + last)]
        grads = dict(net.named_parameters())
        assert all(grads[n].grad is not None and grads[n].grad.abs().sum() > 0 for n in used), net.__class__
