"""Training StyleGAN2 (`ganserve train --arch stylegan2`): the residual discriminator, the one-stage schedule, a tiny
run through the CLI to a model that generates and exports, and exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import write_disc_images

from ganserve.cli import main
from ganserve.errors import ConfigError
from ganserve.models import ModelConfig, build_discriminator, build_generator
from ganserve.models.stylegan2_discriminator import Conv2dLayer
from ganserve.models.weights import load_model, weights_sha256
from ganserve.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ganserve.train.config import CONFIG_NAME, Schedule, TrainConfig
from ganserve.train.losses import path_lengths
from ganserve.train.trainer import Trainer, train

TINY = dict(arch="stylegan2", resolution=16, z_dim=32, w_dim=32, fmap_base=128, fmap_max=32, mapping_layers=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_disc_images(tmp_path_factory.mktemp("discs"), n=48)


def test_the_discriminator_has_nvlabs_layer_names_and_halves_like_its_skip_path():
    D = build_discriminator(ModelConfig(arch="stylegan2", resolution=16, channel_base=256, channel_max=32))
    names = set(D.state_dict())
    expected = {"b16.resample_filter", "b16.fromrgb.weight", "b16.fromrgb.bias", "b16.fromrgb.resample_filter"}
    for res in (16, 8):
        expected |= {f"b{res}.resample_filter", f"b{res}.skip.weight", f"b{res}.skip.resample_filter"}
        expected |= {f"b{res}.conv{i}.{p}" for i in (0, 1) for p in ("weight", "bias", "resample_filter")}
    expected |= {f"b4.{layer}.{p}" for layer in ("conv", "fc", "out") for p in ("weight", "bias")}
    expected |= {"b4.conv.resample_filter"}
    assert names == expected  # stylegan2-ada-pytorch's names: its discriminator weights load as they are
    assert D.b16.fromrgb.weight.shape == (16, 3, 1, 1) and D.b8.conv1.weight.shape == (32, 32, 3, 3)
    assert D.b4.fc.weight.shape == (32, 32 * 16) and D.b4.out.weight.shape == (1, 32)
    scores = D(torch.randn(6, 3, 16, 16))
    assert scores.shape == (6,) and torch.isfinite(scores).all()

    # The 3x3 halving convolution (filter, then stride 2) and the 1x1 one (filter and subsample, then the product)
    # sample the filtered image at the same places: a 3x3 kernel that is zero but for its centre gives the 1x1 result.
    torch.manual_seed(0)
    conv3 = Conv2dLayer(4, 5, 3, lrelu=False, bias=False, down=True)
    conv1 = Conv2dLayer(4, 5, 1, lrelu=False, bias=False, down=True)
    with torch.no_grad():
        conv3.weight.zero_()
        conv3.weight[:, :, 1, 1] = conv1.weight[:, :, 0, 0] * 3  # its weight gain is 1/3 of the 1x1's
    x = torch.randn(2, 4, 8, 8)
    assert conv3(x).shape == conv1(x).shape == (2, 5, 4, 4)
    torch.testing.assert_close(conv3(x), conv1(x), rtol=1e-5, atol=1e-5)
    # A constant image stays constant where the filter sees no padding: the filter keeps the mean.
    const = conv1(torch.ones(1, 4, 8, 8))
    torch.testing.assert_close(const[..., 1:-1, 1:-1], conv1.weight.sum(1)[None, :, :1, :1].expand(1, 5, 2, 2) / 2)


def test_stylegan2_trains_at_its_full_resolution_only():
    cfg = TrainConfig(**TINY, final_kimg=1.0, batch_sizes={16: 16})
    s = Schedule(cfg, num_stages=3)
    assert s.total_nimg == 1000 and s.start == [0, 0, 0]
    steps = list(s.steps())
    assert {(p.stage, p.alpha, p.batch) for p in steps} == {(2, 1.0, 16)} and len(steps) == math.ceil(1000 / 16)
    assert Schedule(TrainConfig(arch="stylegan2"), 5).batches[-1] == 32  # StyleGAN2-ADA's one-GPU batch at 64x64
    model = cfg.model_config()
    assert (model.channel_base, model.channel_max) == (256, 32)  # --fmap-base / --fmap-max in NVlabs' terms
    assert model.channel_schedule() == ModelConfig(arch="stylegan", resolution=16, fmap_base=128,
                                                   fmap_max=32).channel_schedule()
    assert cfg.loss == "logistic"
    with pytest.raises(ConfigError, match="8x8 or more"):
        TrainConfig(**{**TINY, "resolution": 4}).model_config()
    G = build_generator(ModelConfig(**{**model.__dict__, "architecture": "resnet"}))
    with pytest.raises(ValueError, match="not progressive"):  # only 'skip' has an image at every resolution
        G.synthesis(G.mapping(torch.randn(1, 32)), stage=1)


def test_stylegan2_grows_against_progans_discriminator_and_resumes_bit_for_bit(data_dir, tmp_path):
    cfg = TrainConfig(**TINY, grow=True)
    assert cfg.pl_weight == 0.0 and TrainConfig(**TINY).grow is False
    with pytest.raises(ConfigError, match="network that grows"):
        TrainConfig(**TINY, grow=True, pl_weight=2.0)
    with pytest.raises(ConfigError, match="always grows"):
        TrainConfig(arch="progan", grow=False)
    s = Schedule(TrainConfig(**TINY, grow=True, fade_kimg=0.08, stab_kimg=0.08), 3)
    assert s.progressive and s.start == [0, 80, 240] and s.stage_alpha(120) == (1, 0.5)
    model = cfg.model_config()
    assert type(build_discriminator(model, grow=True)).__name__ == "Discriminator"
    assert type(build_discriminator(model)).__name__ == "StyleGAN2Discriminator"

    # The image at each stage; fading in, it starts from the stage below, upsampled as the trainer fades the reals.
    torch.manual_seed(0)
    G = build_generator(model)
    ws = G.mapping(torch.randn(2, 32))
    low = G.synthesis(ws, stage=1)
    assert low.shape == (2, 3, 8, 8)
    torch.testing.assert_close(G.synthesis(ws, stage=2, alpha=0.0), low.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.equal(G.synthesis(ws, stage=2, alpha=1.0), G.synthesis(ws))

    # A run through the trainer: stopped while 8x8 fades in and resumed, it ends with the same weights.
    common = dict(**TINY, grow=True, fade_kimg=0.08, stab_kimg=0.08, final_kimg=0.08,
                  batch_sizes={4: 16, 8: 16, 16: 16}, ema_kimg=0.004, loss="wgan_gp", progress=False, workers=0,
                  metric_num=0, tensorboard=False, reg_interval=2)
    train(TrainConfig(data=str(data_dir), out=str(tmp_path / "full"), **common))
    assert train(TrainConfig(data=str(data_dir), out=str(tmp_path / "part"), **common), stop_after_steps=7) is None
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert (ckpt["stage"], ckpt["alpha"]) == (1, 0.4) and "from_rgb.0.weight" in ckpt["D"]
    assert train(TrainConfig(), resume=tmp_path / "part") is not None
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert a["step"] == b["step"] == 25 and a["stage"] == 2
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    G = load_model(tmp_path / "full" / "model")
    assert G.config.arch == "stylegan2" and G(torch.randn(2, 32)).shape == (2, 3, 16, 16)


def test_a_tiny_stylegan2_run_through_the_cli_makes_a_model_that_generates_and_exports(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--arch", "stylegan2", "--resolution", "16",
            "--z-dim", "32", "--w-dim", "32", "--fmap-base", "128", "--fmap-max", "32", "--mapping-layers", "2",
            "--final-kimg", "0.48", "--batch-size", "16", "--reg-interval", "4", "--r1-gamma", "1", "--workers", "0",
            "--no-progress", "--metric-num", "16", "--checkpoint-kimg", "0.16", "--mirror", "--license", "CC0 discs"]
    assert main(args) == 0
    G = load_model(out / "model")
    assert G.config.arch == "stylegan2" and G.config.resolution == 16 and G.config.channel_base == 256
    summary = G.config.training
    assert summary["kimg"] == 0.48 and summary["steps"] == 30 and summary["loss"] == "logistic"
    assert summary["swd_x1e3"] > 0 and summary["swd_num"] == 16
    assert G.w_avg.abs().sum() > 0
    assert [p.name for p in list_checkpoints(out)] == [f"ckpt-{n:010d}.pt" for n in (160, 320, 480)]
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert (ckpt["stage"], ckpt["alpha"]) == (2, 1.0)
    # G moved away from its initialisation, and D's residual blocks trained too
    fresh = build_generator(G.config)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), G.state_dict().values()))
    assert "b16.skip.weight" in ckpt["D"]
    grid = Image.open(out / "samples" / "fakes-0000000480.png")
    assert grid.size == (64, 64)

    assert main(["generate", "--model", str(out / "model"), "--seeds", "0-3", "--outdir", str(tmp_path / "png"),
                 "--backend", "torch", "--workers", "1", "--quiet"]) == 0
    torch_pngs = [np.asarray(Image.open(tmp_path / "png" / f"seed{s:04d}.png")) for s in range(4)]
    assert all(p.shape == (16, 16, 3) for p in torch_pngs) and np.std(torch_pngs) > 0
    assert main(["generate", "--model", str(out / "model"), "--seeds", "0-3", "--outdir", str(tmp_path / "ort"),
                 "--backend", "onnxruntime", "--workers", "1", "--quiet"]) == 0
    ort_pngs = [np.asarray(Image.open(tmp_path / "ort" / f"seed{s:04d}.png")) for s in range(4)]
    diff = np.abs(np.stack(torch_pngs).astype(int) - np.stack(ort_pngs))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99

    assert main(["eval", "--model", str(out), "--data", str(data_dir), "--num", "16", "--json"]) == 0


def test_stylegan2_resume_equals_uninterrupted_bit_for_bit(data_dir, tmp_path):
    common = dict(**TINY, final_kimg=0.32, batch_sizes={16: 16}, progress=False, workers=0, metric_num=0,
                  tensorboard=False, reg_interval=2, r1_gamma=1.0, mirror=True, augment="color,translation,cutout")
    train(TrainConfig(data=str(data_dir), out=str(tmp_path / "full"), **common))
    part = TrainConfig(data=str(data_dir), out=str(tmp_path / "part"), **common)
    assert train(part, stop_after_steps=7) is None
    assert load_checkpoint(latest_checkpoint(tmp_path / "part"))["step"] == 7
    assert train(TrainConfig(), resume=tmp_path / "part") is not None
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert a["step"] == b["step"] == 20
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert weights_sha256(tmp_path / "full" / "model") == weights_sha256(tmp_path / "part" / "model")
    assert json.loads(a["train_config"])["arch"] == "stylegan2"


def test_path_lengths_match_their_closed_form_for_a_linear_synthesis():
    """For images that are a linear map M of the styles, J_w^T y = y M^T, so the path length of a sample is the norm
    of (y M^T) reshaped to its styles, squared entries summed over w and averaged over the style inputs."""
    torch.manual_seed(0)
    n, num_ws, w_dim, c, r = 3, 4, 5, 3, 8
    M = torch.randn(num_ws * w_dim, c * r * r, dtype=torch.float64)
    ws = torch.randn(n, num_ws, w_dim, dtype=torch.float64, requires_grad=True)
    img = (ws.flatten(1) @ M).view(n, c, r, r)
    lengths = path_lengths(img, ws, torch.Generator().manual_seed(5))
    y = torch.randn(img.shape, generator=torch.Generator().manual_seed(5)) / r
    grad = (y.flatten(1).double() @ M.T).view(n, num_ws, w_dim)
    torch.testing.assert_close(lengths.double(), grad.square().sum(2).mean(1).sqrt(), rtol=1e-5, atol=0)
    # Differentiable where the Jacobian depends on the styles (a quadratic map): the penalty trains the generator.
    path_lengths((ws.flatten(1).square() @ M).view(n, c, r, r), ws).sum().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


def test_path_length_regularisation_runs_every_nth_g_step_and_is_for_stylegan2_only(data_dir, tmp_path):
    assert TrainConfig(arch="stylegan2").pl_weight == 2.0 and TrainConfig(arch="stylegan").pl_weight == 0.0
    with pytest.raises(ConfigError, match="for stylegan2"):
        TrainConfig(arch="stylegan", pl_weight=1.0)
    with pytest.raises(ConfigError, match="pl_interval"):
        TrainConfig(arch="stylegan2", pl_interval=0)
    cfg = TrainConfig(data=str(data_dir), out=str(tmp_path / "pl"), **TINY, final_kimg=0.32, batch_sizes={16: 16},
                      progress=False, workers=0, metric_num=0, tensorboard=False, pl_interval=3)
    t = Trainer(cfg)
    step, logged = t.train_step, []
    t.train_step = lambda phase, batch: logged.append((phase.step, step(phase, batch))) or logged[-1][1]
    assert t.train(stop_after_steps=7) is None
    assert [k for k, stats in logged if "pl" in stats] == [0, 3, 6] and len(logged) == 7
    assert all(stats["pl"] > 0 for _, stats in logged if "pl" in stats)
    # The running mean moved from 0 towards the lengths (by 1% a time) and is carried by the checkpoint.
    pl_mean = load_checkpoint(latest_checkpoint(tmp_path / "pl"))["pl_mean"]
    assert 0 < pl_mean.item() < max(stats["pl"] for _, stats in logged if "pl" in stats)
    saved = json.loads((tmp_path / "pl" / CONFIG_NAME).read_text())
    assert (saved["pl_weight"], saved["pl_interval"]) == (2.0, 3)
    without = {k: v for k, v in saved.items() if k not in ("pl_weight", "pl_interval", "grow")}
    assert TrainConfig.from_dict({**without, "arch": "stylegan"}).pl_weight == 0.0  # a config from before the option
