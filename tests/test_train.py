"""Training: schedule, losses, a tiny model through three resolutions, exact resume, checkpoints, DDP over gloo."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_data import write_disc_images

from ganserve.cli import main
from ganserve.models.weights import load_config, load_model, weights_sha256
from ganserve.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ganserve.train.config import CONFIG_NAME, Schedule, TrainConfig, parse_batch_sizes
from ganserve.train.losses import (
    WGANGP,
    LogisticR1,
    logistic_g_loss,
    logistic_r1_d_loss,
    make_loss,
    wgan_g_loss,
    wgan_gp_d_loss,
)
from ganserve.train.networks import state_digest
from ganserve.train.outputs import SAMPLES_DIR
from ganserve.train.run import RunError, resolve
from ganserve.train.trainer import Trainer, train

TINY = dict(resolution=16, z_dim=32, w_dim=32, fmap_base=128, fmap_max=32, mapping_layers=2)
# 600 + 2 * (600 + 600) kimg scaled by 0.0004: 1200 images, 75 steps of 16 through 4x4, 8x8 and 16x16.
QUICK = dict(kimg_scale=0.0004, batch_sizes={4: 16, 8: 16, 16: 16}, progress=False, workers=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and threads that spin-wait on a shared, busy CPU slow the
    runs down several times over; the tests' networks run single-threaded (results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_disc_images(tmp_path_factory.mktemp("discs"), n=48)


def tiny_train_config(data: Path, out: Path, arch: str = "stylegan", **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), arch=arch, **{**TINY, **QUICK, **overrides})


# -- schedule and config ---------------------------------------------------------------------------------------------
def test_schedule_follows_the_paper_and_scales_with_one_option():
    cfg = TrainConfig(arch="progan")
    s = Schedule(cfg, num_stages=9)  # 4x4 ... 1024x1024
    assert s.total_nimg == (600 + 8 * 1200) * 1000
    assert s.stage_alpha(0) == (0, 1.0)
    assert s.stage_alpha(600_000) == (1, 0.0)
    assert s.stage_alpha(900_000) == (1, 0.5)
    assert s.stage_alpha(1_200_000) == (1, 1.0)
    assert s.stage_alpha(1_800_000) == (2, 0.0)
    assert s.batches == [16, 16, 16, 16, 16, 16, 14, 6, 3]
    assert Schedule(TrainConfig(arch="stylegan"), 5).batches == [128, 128, 128, 64, 32]
    quick = Schedule(TrainConfig(kimg_scale=0.01), 5)
    assert quick.total_nimg == (600 + 4 * 1200) * 10
    steps = list(Schedule(TrainConfig(kimg_scale=0.0004, batch_sizes={4: 16, 8: 16, 16: 16}), 3).steps())
    assert [p.stage for p in steps].count(0) == 15 and steps[-1].stage == 2 and steps[-1].nimg < 1200
    assert all(b.nimg - a.nimg == a.batch for a, b in zip(steps, steps[1:]))
    assert parse_batch_sizes("4:64,8:32") == {4: 64, 8: 32} and parse_batch_sizes("8")[256] == 8


def test_config_round_trips_through_json_and_rejects_bad_values(tmp_path):
    cfg = TrainConfig(data="d", arch="progan", batch_sizes={4: 8}, final_kimg=10)
    assert cfg.loss == "wgan_gp" and TrainConfig(arch="stylegan").loss == "logistic"
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    for bad in (dict(kimg_scale=0), dict(loss="hinge"), dict(style_mixing_prob=2), dict(batch_sizes={5: 2}),
                dict(reg_interval=0), dict(reg_interval=2.5)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.01  # type: ignore[misc]


def test_a_run_is_resolved_into_a_new_config_and_the_callers_is_left_unchanged(data_dir, tmp_path):
    cfg = TrainConfig(data=os.path.relpath(data_dir), out=str(tmp_path / "r"), arch="progan",
                      **{**TINY, **QUICK, "resolution": None}, metric_num=0, tensorboard=False)
    before = dataclasses.asdict(cfg)
    run = resolve(cfg)
    assert run.cfg.data == str(data_dir.resolve()) and run.cfg.resolution == 16 and run.checkpoint is None
    assert run.model_config.num_stages == 3 and run.schedule.total_nimg == 1200 and run.run_dir == tmp_path / "r"
    assert train(cfg, stop_after_steps=2) is None
    overrides = {"final_kimg": 1200.0}
    resumed = resolve(TrainConfig(), resume=tmp_path / "r", resume_overrides=overrides)
    assert resumed.cfg == dataclasses.replace(run.cfg, final_kimg=1200.0) and resumed.checkpoint["step"] == 2
    assert train(cfg, resume=tmp_path / "r", stop_after_steps=1, resume_overrides=overrides) is None
    assert dataclasses.asdict(cfg) == before and overrides == {"final_kimg": 1200.0}
    with pytest.raises(RunError, match="already holds a run"):
        resolve(cfg)


# -- losses ----------------------------------------------------------------------------------------------------------
def test_wgan_gp_and_r1_penalties_match_their_closed_forms():
    w = torch.randn(1, 3, 4, 4)

    def critic(x):  # linear: grad is w everywhere, ||grad|| = ||w||
        return (x * w).flatten(1).sum(1)

    reals, fakes = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    loss, stats = wgan_gp_d_loss(critic, reals, fakes, gp_lambda=10.0, drift=0.001)
    gp = (w.norm() - 1) ** 2
    expected = (critic(fakes) - critic(reals) + 10 * gp + 0.001 * critic(reals) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["gp"] == pytest.approx(gp.item(), rel=1e-5)
    loss, stats = logistic_r1_d_loss(critic, reals, fakes, r1_gamma=10.0)
    sp = torch.nn.functional.softplus
    expected = (sp(critic(fakes)) + sp(-critic(reals)) + 5 * w.square().sum()).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["r1"] == pytest.approx(w.square().sum().item(), rel=1e-5)
    assert wgan_g_loss(critic, fakes).item() == pytest.approx(-critic(fakes).mean().item(), rel=1e-5)
    assert logistic_g_loss(critic, fakes).item() == pytest.approx(sp(-critic(fakes)).mean().item(), rel=1e-5)


def test_the_loss_is_chosen_once_from_the_config_and_computes_the_loss_functions():
    wgan = make_loss(TrainConfig(arch="progan", gp_lambda=5.0, drift=0.01, gp_target=2.0))
    logistic = make_loss(TrainConfig(arch="stylegan", r1_gamma=3.0))
    assert wgan == WGANGP(5.0, 0.01, 2.0) and logistic == LogisticR1(3.0)
    w = torch.randn(1, 3, 4, 4)

    def critic(x):
        return (x * w).flatten(1).sum(1)

    reals, fakes = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    loss, stats = wgan.d_loss(critic, reals, fakes, torch.Generator().manual_seed(1), step=7)
    expected = wgan_gp_d_loss(critic, reals, fakes, 5.0, 0.01, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(loss, expected[0]) and stats == expected[1]
    loss, stats = logistic.d_loss(critic, reals, fakes, torch.Generator(), step=7)
    expected = logistic_r1_d_loss(critic, reals, fakes, 3.0)
    assert torch.equal(loss, expected[0]) and stats == expected[1]
    assert torch.equal(wgan.g_loss(critic, fakes), wgan_g_loss(critic, fakes))
    assert torch.equal(logistic.g_loss(critic, fakes), logistic_g_loss(critic, fakes))


# -- a whole run -----------------------------------------------------------------------------------------------------
def test_lazy_regularisation_applies_the_penalty_every_nth_step_weighted_n_times(data_dir, tmp_path):
    w = torch.randn(1, 3, 4, 4)

    def critic(x):
        return (x * w).flatten(1).sum(1)

    reals, fakes = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    wgan = make_loss(TrainConfig(arch="progan", gp_lambda=5.0, reg_interval=4))
    logistic = make_loss(TrainConfig(arch="stylegan", r1_gamma=3.0, reg_interval=4))
    for step in range(9):
        on = step % 4 == 0
        loss, stats = wgan.d_loss(critic, reals, fakes, torch.Generator().manual_seed(1), step)
        expected = wgan_gp_d_loss(critic, reals, fakes, 20.0 if on else 0.0, 0.001, 1.0,
                                  torch.Generator().manual_seed(1))
        assert torch.equal(loss, expected[0]) and stats == expected[1] and ("gp" in stats) == on
        loss, stats = logistic.d_loss(critic, reals, fakes, torch.Generator(), step)
        expected = logistic_r1_d_loss(critic, reals, fakes, 12.0 if on else 0.0)
        assert torch.equal(loss, expected[0]) and stats == expected[1] and ("r1" in stats) == on
    # Off-steps skip the penalty's work entirely: no double backward, no interpolates through the critic.
    seen = []
    loss, stats = wgan.d_loss(lambda x: seen.append(x.requires_grad) or critic(x), reals, fakes, torch.Generator(), 1)
    assert seen == [False, False] and loss.item() == pytest.approx(
        (critic(fakes) - critic(reals) + 0.001 * critic(reals) ** 2).mean().item(), rel=1e-5)
    # A run with it logs the penalty on its penalty steps only, and a config written before the option reads as 1.
    t = Trainer(tiny_train_config(data_dir, tmp_path / "lazy", arch="progan", metric_num=0, tensorboard=False,
                                  reg_interval=3))
    step, logged = t.train_step, []
    t.train_step = lambda phase, batch: logged.append((phase.step, step(phase, batch))) or logged[-1][1]
    assert t.train(stop_after_steps=7) is None
    assert [k for k, stats in logged if "gp" in stats] == [0, 3, 6] and len(logged) == 7
    assert all(math.isfinite(v) for _, stats in logged for v in stats.values())
    saved = json.loads((tmp_path / "lazy" / CONFIG_NAME).read_text())
    assert saved["reg_interval"] == 3 and TrainConfig.from_dict({k: v for k, v in saved.items()
                                                                 if k != "reg_interval"}).reg_interval == 1


@pytest.fixture(scope="module", params=["progan", "stylegan"])
def trained_run(request, data_dir, tmp_path_factory):
    """A tiny model trained through 4x4, 8x8 and 16x16 by the CLI; returns (arch, run dir)."""
    arch = request.param
    out = tmp_path_factory.mktemp(f"run-{arch}")
    args = ["train", "--data", str(data_dir), "--out", str(out), "--arch", arch, "--resolution", "16",
            "--z-dim", "32", "--w-dim", "32", "--fmap-base", "128", "--fmap-max", "32", "--mapping-layers", "2",
            "--kimg-scale", "0.0004", "--batch-size", "16", "--workers", "0", "--no-progress",
            "--metric-num", "16", "--checkpoint-kimg", "0.4", "--license", "CC0 test discs"]
    if arch == "progan":
        args.append("--mirror")
    assert main(args) == 0
    return arch, out


def test_tiny_model_trains_through_three_resolutions(trained_run):
    arch, out = trained_run
    G = load_model(out / "model")
    assert G.config.arch == arch and G.config.resolution == 16 and G.config.num_stages == 3
    summary = G.config.training
    assert summary["kimg"] >= 1.2 and summary["images"] == 48 and summary["loss"] == {
        "progan": "wgan_gp", "stylegan": "logistic"}[arch]
    assert summary["swd_x1e3"] > 0 and summary["swd_floor_x1e3"] > 0 and summary["swd_num"] == 16
    assert G.config.license == "CC0 test discs"
    assert G.w_avg.abs().sum() > 0  # tracked as an EMA of the mapping output during training
    images = G(torch.randn(4, 32))
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
    saved = TrainConfig.load(out / CONFIG_NAME)
    assert saved.arch == arch and saved.resolution == 16 and saved.mirror == (arch == "progan")


def test_run_writes_sample_grids_growth_gif_tensorboard_and_checkpoints(trained_run):
    _, out = trained_run
    samples = out / SAMPLES_DIR
    grids = sorted(samples.glob("fakes-*.png"))
    assert len(grids) >= 3  # at least one per stage end
    sizes = {Image.open(g).size for g in grids}
    assert sizes == {(64, 64)}  # 16 seeds of 16x16, every stage upsampled to the final size
    assert Image.open(samples / "reals.png").size == (64, 64)
    gif = Image.open(samples / "growth.gif")
    assert gif.n_frames == len(grids)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = list_checkpoints(out)
    assert 1 <= len(ckpts) <= 3  # keep_checkpoints
    assert not list((out / "checkpoints").glob("*.tmp"))
    state = load_checkpoint(ckpts[-1])  # weights_only=True
    assert state["nimg"] >= 1200 and state["stage"] == 2 and state["alpha"] == 1.0
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "rng"} <= set(state)
    # G_ema is a smoothed copy of G: close to it, but not equal
    G_ema = load_model(out / "model")
    diff = [(state["G"][k] - v).abs().max().item() for k, v in G_ema.state_dict().items() if "weight" in k]
    assert max(diff) > 0


def test_eval_scores_every_checkpoint_of_a_run_at_its_schedule_position(trained_run, data_dir, capsys):
    _, out = trained_run
    common = ["--data", str(data_dir), "--num", "16", "--device", "cpu", "--json"]
    assert main(["eval", "--model", str(out), *common]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["checkpoint"] for r in rows] == [p.name for p in list_checkpoints(out)]
    assert [r["nimg"] for r in rows] == [720, 800, 1200]  # the last three kept: 16x16 fading in, then stable
    assert [round(r["alpha"], 3) for r in rows] == [0.0, 0.333, 1.0] and {r["resolution"] for r in rows} == {16}
    assert all(r["fake"]["avg"] > 0 and r["floor"] == rows[0]["floor"] for r in rows)
    assert rows[0]["fake"] != rows[1]["fake"]
    # The last checkpoint's EMA generator is the model that was written: the same score, to the bit.
    assert main(["eval", "--model", str(out / "model"), *common]) == 0
    assert json.loads(capsys.readouterr().out)["fake"] == rows[-1]["fake"]
    assert main(["eval", "--model", str(list_checkpoints(out)[0]), *common[:-1]]) == 0
    assert "kimg      0.7  16x16            alpha 0.00  SWD x1e3" in capsys.readouterr().out
    assert main(["eval", "--model", str(out / "checkpoints" / "nope.pt"), *common]) == 2


def test_existing_run_needs_resume_and_resume_of_a_finished_run_changes_nothing(trained_run, data_dir):
    _, out = trained_run
    with pytest.raises(RunError, match="already holds a run"):
        Trainer(TrainConfig(data=str(data_dir), out=str(out), **TINY))
    before = weights_sha256(out / "model")
    assert main(["train", "--resume", str(out), "--arch", "progan"]) == 2  # resume takes no other flags
    assert train(TrainConfig(), resume=out) is not None
    assert weights_sha256(out / "model") == before


def test_resume_can_end_the_final_stage_now_or_train_it_longer(data_dir, tmp_path):
    run = tmp_path / "r"
    cfg = tiny_train_config(data_dir, run, metric_num=0, tensorboard=False)
    assert Schedule(cfg, num_stages=3).total_nimg == 1200
    assert train(cfg, stop_after_steps=65) is None  # 1040 images: stabilising 16x16
    # A final stage of 40 images ends before the position reached: the run finishes at once and writes the model.
    assert main(["train", "--resume", str(run), "--final-kimg", "100"]) == 0
    first = weights_sha256(run / "model")
    assert load_checkpoint(latest_checkpoint(run))["nimg"] == 1040
    # The speed at the final resolution was measured before the stop and is carried by the checkpoint.
    assert load_config(run / "model").training["img_per_s"] > 0
    # 480 images at the final resolution: 25 more steps, from the exact state the run stopped in.
    assert main(["train", "--resume", str(run), "--final-kimg", "1200"]) == 0
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["nimg"] == 1440 and ckpt["step"] == 90
    assert json.loads(ckpt["train_config"])["final_kimg"] == 1200
    assert weights_sha256(run / "model") != first
    assert main(["train", "--resume", str(run), "--r1-gamma", "1"]) == 2  # what would change the run's math is refused
    # Augmenting D's inputs may be switched on for the rest of a run, and is recorded.
    assert main(["train", "--resume", str(run), "--final-kimg", "1280", "--augment", "translation,cutout"]) == 0
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["nimg"] == 1472 and json.loads(ckpt["train_config"])["augment"] == "translation,cutout"
    assert json.loads((run / CONFIG_NAME).read_text())["augment"] == "translation,cutout"
    # So may a lower learning rate for the last stretch: both optimisers take it, keeping their moments.
    assert main(["train", "--resume", str(run), "--final-kimg", "1312", "--lr", "0.0002"]) == 0
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["nimg"] == 1488 and json.loads(ckpt["train_config"])["lr"] == 0.0002
    assert [g["lr"] for name in ("opt_G", "opt_D") for g in ckpt[name]["param_groups"]] == [0.0002, 0.0002]
    # And a longer EMA half-life (here a third of a stage; the papers use 10 kimg at the end): in the final stage no
    # new layers can lag behind it, so it is not warned about as it is at the start (the test below).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(run), "--final-kimg", "1328", "--ema-kimg", "200"]) == 0
    assert not [w for w in caught if "half-life" in str(w.message)]
    assert json.loads(load_checkpoint(latest_checkpoint(run))["train_config"])["ema_kimg"] == 200


def test_resume_equals_uninterrupted_bit_for_bit(data_dir, tmp_path):
    common = dict(mirror=True, metric_num=0, tensorboard=False, checkpoint_kimg=100.0)
    full = tiny_train_config(data_dir, tmp_path / "full", **common)
    train(full)
    # The same run, stopped mid fade-in of 8x8 (step 20: alpha 1/3), then resumed, with a worker process for data.
    part = tiny_train_config(data_dir, tmp_path / "part", **{**common, "workers": 1})
    assert train(part, stop_after_steps=20) is None
    stopped = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert list(stopped) == ["format", "version", "G", "D", "G_ema", "opt_G", "opt_D", "step", "nimg", "stage", "alpha",
                             "elapsed_s", "final_imgs", "final_time_s", "rng", "train_config", "model_config"]
    assert stopped["step"] == 20 and stopped["stage"] == 1 and 0 < stopped["alpha"] < 1
    assert train(TrainConfig(), resume=tmp_path / "part") is not None
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert a["step"] == b["step"] and a["nimg"] == b["nimg"]
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for opt in ("opt_G", "opt_D"):
        for pid, st in a[opt]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[opt]["state"][pid][k])
    assert weights_sha256(tmp_path / "full" / "model") == weights_sha256(tmp_path / "part" / "model")


def test_style_mixing_regularisation_mixes_two_latents_at_a_crossover(data_dir, tmp_path):
    t = Trainer(tiny_train_config(data_dir, tmp_path / "mix", metric_num=0, tensorboard=False, style_mixing_prob=1.0))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 32, generator=gen)
    ws = t.train_step.ws(z, stage=2, gen=gen, track_w_avg=True).detach()
    first = ws[:, :1]
    same = (ws == first).all(dim=2)  # [N, num_ws]: layer equals layer 0
    cut = same.float().argmin(dim=1)  # the first mixed layer
    assert (cut >= 1).all() and (cut <= 5).all() and len(set(cut.tolist())) > 1
    assert t.nets.G.w_avg.abs().sum() > 0
    t.train_step.style_mixing_prob = 0.0
    ws = t.train_step.ws(z, stage=2, gen=gen, track_w_avg=False)
    assert (ws == ws[:, :1]).all()


# -- multi-process ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# StyleGAN2 with its path length regularisation on every other step: the running mean is averaged across ranks.
@pytest.mark.parametrize("arch,length", [("stylegan", ["--kimg-scale", "0.0002"]),
                                         ("stylegan2", ["--final-kimg", "0.32", "--pl-interval", "2"])])
def test_ddp_with_two_gloo_processes_keeps_the_ranks_weights_identical(data_dir, tmp_path, arch, length):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ganserve.train", "--data", str(data_dir), "--out", str(out),
           "--arch", arch, "--resolution", "16", "--z-dim", "32", "--w-dim", "32", "--fmap-base", "64",
           "--fmap-max", "16", "--mapping-layers", "2", *length, "--batch-size", "8",
           "--workers", "0", "--no-progress", "--metric-num", "0", "--no-tensorboard", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(out / "digests" / f"rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    # rank 0 alone wrote the checkpoint; it holds the weights whose digest both ranks reported
    assert json.loads((out / "model" / "config.json").read_text())["training"]["kimg"] >= 0.32
    final = load_checkpoint(latest_checkpoint(out))
    assert final["stage"] == 2 and ("pl_mean" in final) == (arch == "stylegan2")
    assert digests[0].strip() == state_digest(final["G"], final["D"], final["G_ema"])


def test_ctrl_c_writes_a_checkpoint_and_stops_cleanly(data_dir, tmp_path):
    out = tmp_path / "sigint"
    cmd = [sys.executable, "-m", "ganserve.train", "--data", str(data_dir), "--out", str(out), "--arch", "progan",
           "--resolution", "16", "--z-dim", "32", "--fmap-base", "128", "--fmap-max", "32", "--kimg-scale", "1",
           "--batch-size", "8", "--workers", "0", "--no-progress", "--no-tensorboard", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out / SAMPLES_DIR / "reals.png").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "--resume" in stdout + stderr
    state = load_checkpoint(latest_checkpoint(out))
    assert state["step"] >= 1 and state["stage"] == 0 and not (out / "model").exists()


def test_greyscale_training_step_and_sample_grid(data_dir, tmp_path):
    t = Trainer(tiny_train_config(data_dir, tmp_path / "grey", arch="progan", img_channels=1, metric_num=0,
                                  tensorboard=False))
    assert t.data.pyramid[-1].shape == (48, 1, 16, 16)
    phase = next(t.schedule.steps())
    before = [p.detach().clone() for p in t.nets.D.parameters()]
    stats = t.train_step(phase, t.data.pyramid[phase.stage][:16])
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, t.nets.D.parameters()))
    assert t.outputs.sample_grid(0).shape == (64, 64, 1)


def test_an_ema_half_life_long_next_to_the_stages_is_warned_about(data_dir, tmp_path):
    cfg = tiny_train_config(data_dir, tmp_path / "r", metric_num=0, tensorboard=False, kimg_scale=1.0,
                            fade_kimg=0.4, stab_kimg=0.4, ema_kimg=0.4)
    with pytest.warns(UserWarning, match=r"EMA's half-life \(ema_kimg 0.4\) is long.*--ema-kimg 0.02"):
        assert train(cfg, stop_after_steps=1) is None
