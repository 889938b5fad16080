"""The training loop: progressive growing with fade_in, one D and one G step per minibatch, EMA and w_avg tracking.

Owns a run directory (config, checkpoints, samples, TensorBoard, final model), exact resume and rank-0-only writes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ganserve.devices import keep_freed_memory, resolve_device
from ganserve.imaging import make_grid, to_pil, to_uint8
from ganserve.models import build_discriminator, build_generator
from ganserve.models.config import ModelConfig
from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.latents import seeds_to_z, style_mixing
from ganserve.models.layers import downsample, fade_in, upsample
from ganserve.models.weights import save_model
from ganserve.schema import parse_seeds
from ganserve.train import distributed as ddp
from ganserve.train.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ganserve.train.config import CONFIG_NAME, RESUME_OVERRIDABLE, Phase, Schedule, TrainConfig
from ganserve.train.data import BatchSource, batch_loader, image_pyramid, load_images, natural_resolution
from ganserve.train.evaluate import evaluate_swd
from ganserve.train.losses import logistic_g_loss, logistic_r1_d_loss, wgan_g_loss, wgan_gp_d_loss

MODEL_DIR = "model"
SAMPLES_DIR = "samples"
GROWTH_GIF = "growth.gif"


class RunError(ValueError):
    """A run directory that cannot be started or resumed as asked; the message says why."""


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The RNG of one step on one rank: latents, noise, mixing and penalty weights depend on (seed, step, rank) only."""
    key = int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator(device).manual_seed(key)


def state_digest(*state_dicts: dict[str, torch.Tensor]) -> str:
    """sha256 over state dicts (parameters and buffers), used to check that DDP ranks hold the same weights."""
    h = hashlib.sha256()
    for sd in state_dicts:
        for name, t in sorted(sd.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """One run. `Trainer(cfg).train()` starts or, with `resume`, continues it; returns the model directory."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None,
                 resume_overrides: dict[str, Any] | None = None):
        self.device = resolve_device(cfg.device)
        self.dist, self.device = ddp.init_distributed(self.device)
        self.cuda = self.device.type == "cuda"
        if self.device.type == "cpu":
            keep_freed_memory()  # fewer page faults per step (benchmarks/README.md: 190 vs 197-210 s for a resume)
        self.run_dir = Path(cfg.out)
        ckpt = None
        if resume is not None:
            ckpt_path = Path(resume)
            if ckpt_path.is_dir():
                self.run_dir = ckpt_path
                found = latest_checkpoint(ckpt_path)
                if found is None:
                    raise RunError(f"{ckpt_path}: no checkpoint to resume from")
                ckpt_path = found
            elif not ckpt_path.is_file():
                raise RunError(f"{ckpt_path}: no such run directory or checkpoint")
            else:
                self.run_dir = ckpt_path.parent.parent
            ckpt = load_checkpoint(ckpt_path)
            if ckpt.get("format") != CHECKPOINT_FORMAT:
                raise RunError(f"{ckpt_path}: not a ganserve training checkpoint")
            cfg = TrainConfig.from_dict(json.loads(ckpt["train_config"]))
            cfg = resumed_config(cfg, resume_overrides or {})
            cfg.out = str(self.run_dir)
        elif latest_checkpoint(self.run_dir) is not None:
            raise RunError(f"{self.run_dir} already holds a run; pass --resume {self.run_dir} or choose another --out")
        else:
            cfg.data = str(Path(cfg.data).resolve())  # a resumed run finds its data from any working directory
        self.cfg = cfg

        # Data: decoded once into uint8 tensors, one per stage.
        resolution = cfg.resolution or natural_resolution(cfg.data)
        cfg.resolution = resolution
        self.model_config = cfg.model_config(resolution)
        images = load_images(cfg.data, resolution, cfg.img_channels, cfg.background)
        self.num_images = len(images)
        self.pyramid = image_pyramid(images, self.model_config.num_stages)
        self.schedule = Schedule(cfg, self.model_config.num_stages)
        shortest = min(cfg.fade_kimg, cfg.stab_kimg)
        if cfg.ema_kimg > shortest / 5 and self.dist.is_main:
            warnings.warn(f"the generator EMA's half-life (ema_kimg {cfg.ema_kimg:g}) is long next to the stages "
                          f"({shortest:g} kimg): the served EMA generator will lag each new resolution's layers; "
                          f"--ema-kimg {shortest / 20:g} keeps it close (the papers use 1/60 of a stage)", stacklevel=2)
        for s, b in enumerate(self.schedule.batches):
            if b % self.dist.world_size:
                raise RunError(f"batch size {b} at {4 * 2**s}x{4 * 2**s} does not divide among "
                               f"{self.dist.world_size} processes")

        # Networks and optimisers; every rank builds the same initial weights, then takes rank 0's anyway.
        torch.manual_seed(cfg.seed)
        self.G = build_generator(self.model_config).to(self.device)
        self.D = build_discriminator(self.model_config).to(self.device)
        if self.cuda and cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        opt = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
        self.opt_G = torch.optim.Adam(self.G.parameters(), **opt)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **opt)
        self.step, self.nimg, self.elapsed = 0, 0, 0.0
        self.final_imgs, self.final_time = 0, 0.0  # images and seconds at the final resolution, for img_per_s
        if ckpt is not None:
            self._load_state(ckpt)
        for m in (self.G, self.D, self.G_ema):
            ddp.broadcast_module(m, self.dist)
        self.amp = self.cuda and cfg.amp
        self.grid_z = torch.from_numpy(seeds_to_z(parse_seeds(cfg.grid_seeds), self.model_config.z_dim))
        self.writer = None
        self._stop = False

    # -- state ------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        stage, alpha = self.schedule.stage_alpha(self.nimg)
        return {
            "format": CHECKPOINT_FORMAT, "version": 1,
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "step": self.step, "nimg": self.nimg, "stage": stage, "alpha": alpha, "elapsed_s": self.elapsed,
            "final_imgs": self.final_imgs, "final_time_s": self.final_time, "rng": rng_state(),
            "train_config": json.dumps(self.cfg.to_dict()), "model_config": json.dumps(self.model_config.to_dict()),
        }

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(ckpt[name])
        self.opt_G.load_state_dict(ckpt["opt_G"])
        self.opt_D.load_state_dict(ckpt["opt_D"])
        self.step, self.nimg, self.elapsed = int(ckpt["step"]), int(ckpt["nimg"]), float(ckpt["elapsed_s"])
        self.final_imgs, self.final_time = int(ckpt.get("final_imgs", 0)), float(ckpt.get("final_time_s", 0.0))
        set_rng_state(ckpt["rng"])

    def save_checkpoint(self) -> Path | None:
        if not self.dist.is_main:
            return None
        path = save_checkpoint(checkpoint_path(self.run_dir, self.nimg), self._state(), keep=self.cfg.keep_checkpoints)
        self.save_grid()
        return path

    # -- generation -------------------------------------------------------------------------------------------
    def _noise(self, G: ProgressiveGenerator, n: int, stage: int, gen: torch.Generator) -> list[torch.Tensor] | None:
        """Per-layer random noise for the layers in use at `stage` (the constant buffers stand in for the rest)."""
        consts = G.const_noise()
        if not consts:
            return None
        active = 2 * (stage + 1)
        return [torch.randn(n, 1, c.shape[-2], c.shape[-1], device=self.device, generator=gen) if i < active else c
                for i, c in enumerate(consts)]

    def _ws(self, z: torch.Tensor, stage: int, gen: torch.Generator, track_w_avg: bool) -> torch.Tensor:
        """Mapping, w_avg tracking (EMA over the batch mean, averaged across ranks) and style_mixing regularisation."""
        G, cfg = self.G, self.cfg
        ws = G.mapping(z)
        if track_w_avg:
            with torch.no_grad():
                mean = ddp.all_mean(ws[:, 0].float().mean(dim=0), self.dist)
                G.w_avg.copy_(mean.lerp(G.w_avg, cfg.w_avg_beta))
        if self.model_config.supports_mixing and cfg.style_mixing_prob > 0:
            n, num_ws = ws.shape[0], ws.shape[1]
            active = min(2 * (stage + 1), num_ws)
            cutoff = torch.randint(1, max(active, 2), (n,), device=self.device, generator=gen)
            mixed = torch.rand(n, device=self.device, generator=gen) < cfg.style_mixing_prob
            cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, num_ws))
            z2 = torch.randn(z.shape, device=self.device, generator=gen)
            mask = torch.arange(num_ws, device=self.device)[None] >= cutoff[:, None]
            ws = style_mixing(ws, G.mapping(z2), mask)
        return ws

    def _fakes(self, n: int, phase: Phase, gen: torch.Generator, track_w_avg: bool = False) -> torch.Tensor:
        z = torch.randn(n, self.model_config.z_dim, device=self.device, generator=gen)
        ws = self._ws(z, phase.stage, gen, track_w_avg)
        return self.G.synthesis(ws, self._noise(self.G, n, phase.stage, gen), stage=phase.stage, alpha=phase.alpha)

    def _reals(self, batch: torch.Tensor, phase: Phase) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).float() / 127.5 - 1.0
        if phase.stage > 0 and phase.alpha < 1.0:  # ProGAN fades the reals between resolutions too
            x = fade_in(upsample(downsample(x)), x, phase.alpha)
        if self.cuda and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- one step -----------------------------------------------------------------------------------------------
    def train_step(self, phase: Phase, batch: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        gen = _step_generator(cfg.seed, phase.step, self.dist.rank, self.device)
        reals = self._reals(batch, phase)
        n = reals.shape[0]

        def D(x: torch.Tensor) -> torch.Tensor:
            return self.D(x, stage=phase.stage, alpha=phase.alpha)

        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)
        # Discriminator.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with autocast:
            with torch.no_grad():
                fakes = self._fakes(n, phase, gen)
            if cfg.loss == "wgan_gp":
                loss_D, stats = wgan_gp_d_loss(D, reals, fakes.float(), cfg.gp_lambda, cfg.drift, cfg.gp_target, gen)
            else:
                loss_D, stats = logistic_r1_d_loss(D, reals, fakes.float(), cfg.r1_gamma)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        ddp.average_gradients(self.D, self.dist)
        self.opt_D.step()

        # Generator.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with autocast:
            fakes = self._fakes(n, phase, gen, track_w_avg=True)
            loss_G = wgan_g_loss(D, fakes) if cfg.loss == "wgan_gp" else logistic_g_loss(D, fakes)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        ddp.average_gradients(self.G, self.dist)
        self.opt_G.step()

        # EMA of the generator weights (half-life ema_kimg, scaled with the schedule); buffers are copied.
        ema_nimg = cfg.ema_kimg * 1000 * cfg.kimg_scale
        beta = 0.5 ** (phase.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        return {"loss_D": loss_D.item(), "loss_G": loss_G.item(), **stats}

    # -- outputs -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, nimg: int | None = None) -> np.ndarray:
        """G_ema on the fixed grid seeds at the schedule position `nimg`, upsampled to the final size."""
        stage, alpha = self.schedule.stage_alpha(self.nimg if nimg is None else nimg)
        z = self.grid_z.to(self.device)
        img = self.G_ema.synthesis(self.G_ema.mapping(z), stage=stage, alpha=alpha).float()
        img = F.interpolate(img, size=self.model_config.resolution, mode="nearest")
        return make_grid(to_uint8(img).cpu().numpy())

    def save_grid(self) -> None:
        grid = self.sample_grid()
        samples = self.run_dir / SAMPLES_DIR
        samples.mkdir(parents=True, exist_ok=True)
        to_pil(grid).save(samples / f"fakes-{self.nimg:010d}.png")
        if self.writer is not None:
            self.writer.add_image("samples", grid, self.nimg, dataformats="HWC")

    def save_reals(self) -> None:
        samples = self.run_dir / SAMPLES_DIR
        samples.mkdir(parents=True, exist_ok=True)
        reals = self.pyramid[-1][: len(self.grid_z)].permute(0, 2, 3, 1).numpy()
        to_pil(make_grid(reals)).save(samples / "reals.png")

    def save_growth_gif(self, max_frames: int = 120) -> Path | None:
        frames = sorted((self.run_dir / SAMPLES_DIR).glob("fakes-*.png"))
        if not frames:
            return None
        frames = [frames[round(i)] for i in np.linspace(0, len(frames) - 1, min(max_frames, len(frames)))]
        images = [Image.open(f).convert("RGB") for f in frames]
        if images[0].width > 1024:
            size = (1024, round(images[0].height * 1024 / images[0].width))
            images = [im.resize(size, Image.Resampling.LANCZOS) for im in images]
        path = self.run_dir / SAMPLES_DIR / GROWTH_GIF
        images[0].save(path, save_all=True, append_images=images[1:], duration=400, loop=0)
        return path

    def _open_writer(self) -> None:
        if not (self.cfg.tensorboard and self.dist.is_main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.nimg or None)

    def _install_sigint(self):
        """Ctrl-C finishes the current step, writes a checkpoint and stops (resume with --resume)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._stop = True

        return signal.signal(signal.SIGINT, handler)

    # -- the loop -----------------------------------------------------------------------------------------------
    def train(self, stop_after_steps: int | None = None) -> Path | None:
        """Run to the end of the schedule (or `stop_after_steps` more steps); returns the model directory."""
        previous_sigint = self._install_sigint()
        try:
            return self._run(stop_after_steps)
        finally:
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)

    def _run(self, stop_after_steps: int | None) -> Path | None:
        from tqdm import tqdm

        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / CONFIG_NAME)
            if self.nimg == 0:
                self.save_reals()
        self._open_writer()
        source = BatchSource(self.pyramid, cfg.seed, cfg.mirror, self.dist.rank, self.dist.world_size)
        phases = self.schedule.steps(self.step, self.nimg)
        loader = batch_loader(source, self.schedule.steps(self.step, self.nimg), cfg.workers)
        bar = tqdm(total=self.schedule.total_nimg, initial=self.nimg, unit="img", unit_scale=True,
                   disable=not (cfg.progress and main), dynamic_ncols=True)
        ckpt_every = max(1, round(cfg.checkpoint_kimg * 1000))
        rate, t_last, steps_done = 0.0, time.perf_counter(), 0
        last_stage = self.model_config.num_stages - 1
        stats: dict[str, float] = {}
        try:
            for phase, batch in zip(phases, loader):
                stats = self.train_step(phase, batch)
                self.step, self.nimg = phase.step + 1, phase.nimg + phase.batch
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                self.elapsed += dt
                rate = phase.batch / dt if rate == 0 else 0.9 * rate + 0.1 * phase.batch / dt
                # training speed at the final resolution, leaving out each process's and the stage's warm-up step
                if phase.stage == last_stage and steps_done > 0 and (
                        phase.nimg > self.schedule.start[last_stage] + phase.batch):
                    self.final_imgs, self.final_time = self.final_imgs + phase.batch, self.final_time + dt
                steps_done += 1
                res = 4 * 2**phase.stage
                bar.update(phase.batch)
                bar.set_postfix_str(f"{res}x{res} stage {phase.stage} alpha {phase.alpha:.2f} "
                                    f"kimg {self.nimg / 1000:.1f} D {stats['loss_D']:.3f} G {stats['loss_G']:.3f} "
                                    f"{rate:.0f} img/s", refresh=False)
                if self.writer is not None and phase.step % 10 == 0:
                    for k, v in {**stats, "alpha": phase.alpha, "stage": phase.stage, "img_per_s": rate}.items():
                        self.writer.add_scalar(f"train/{k}", v, self.nimg)
                stage_end = self.nimg >= self.schedule.total_nimg or (
                    self.schedule.stage_alpha(self.nimg)[0] != phase.stage)
                if stage_end or self.nimg // ckpt_every != phase.nimg // ckpt_every:
                    self.save_checkpoint()
                if self._stop or (stop_after_steps is not None and steps_done >= stop_after_steps):
                    if self.nimg < self.schedule.total_nimg:
                        self.save_checkpoint()
                        if main:
                            bar.write(f"stopped at kimg {self.nimg / 1000:.1f}; continue with --resume {self.run_dir}")
                        return None
        finally:
            bar.close()
        return self._finish(self.final_imgs / self.final_time if self.final_time else rate, stats)

    def _finish(self, rate: float, stats: dict[str, float]) -> Path | None:
        """Digests (DDP), then on rank 0: final SWD, the model directory with its training summary, the GIF.

        `rate` is the training speed at the final resolution, in images per second."""
        cfg = self.cfg
        if self.dist.enabled:
            digests = self.run_dir / "digests"
            digests.mkdir(parents=True, exist_ok=True)
            digest = state_digest(self.G.state_dict(), self.D.state_dict(), self.G_ema.state_dict())
            (digests / f"rank{self.dist.rank}.txt").write_text(digest + "\n")
        if not self.dist.is_main:
            if self.writer is not None:
                self.writer.close()
            return None
        summary: dict[str, Any] = {
            "dataset": Path(cfg.data).name, "images": self.num_images, "kimg": round(self.nimg / 1000, 3),
            "steps": self.step, "time_s": round(self.elapsed, 1), "loss": cfg.loss, "seed": cfg.seed,
            "kimg_scale": cfg.kimg_scale,
        }
        if rate > 0:  # unknown when a run resumed from an older checkpoint ends without a step
            summary["img_per_s"] = round(rate, 1)
        if cfg.metric_num > 0:
            result = evaluate_swd(self.G_ema, self.pyramid[-1], cfg.metric_num, device=self.device, seed=cfg.seed)
            summary.update(swd_x1e3=round(result["fake"]["avg"], 3), swd_floor_x1e3=round(result["floor"]["avg"], 3),
                           swd_num=result["num"])
            if self.writer is not None:
                for k, v in result["fake"].items():
                    self.writer.add_scalar(f"swd/{k}", v, self.nimg)
        if stats and all(math.isfinite(v) for v in stats.values()):
            summary["final_loss_D"] = round(stats["loss_D"], 4)
        config = ModelConfig.from_dict({**self.model_config.to_dict(), "training": summary, "license": cfg.license})
        model_dir = save_model(self.G_ema, self.run_dir / MODEL_DIR, config)
        self.save_growth_gif()
        if self.writer is not None:
            self.writer.close()
        return model_dir


def resumed_config(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A resumed run's saved config with the few fields that may change between runs (RESUME_OVERRIDABLE).

    Lengthening `final_kimg` trains on at the final resolution; shortening it below the position reached ends the
    run at once (it writes the model). Nothing that would make the resumed run differ before that point changes."""
    bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if bad:
        raise RunError(f"--resume keeps the run's saved config; only {', '.join(RESUME_OVERRIDABLE)} may change "
                       f"(got {', '.join(bad)})")
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    if "data" in overrides:
        cfg.data = str(Path(cfg.data).resolve())
    return cfg


def train(cfg: TrainConfig, resume: str | Path | None = None, stop_after_steps: int | None = None,
          resume_overrides: dict[str, Any] | None = None) -> Path | None:
    """Train (or resume) a run; returns the servable model directory, or None when stopped early / not rank 0."""
    trainer = Trainer(cfg, resume, resume_overrides)
    try:
        return trainer.train(stop_after_steps)
    finally:
        ddp.shutdown(trainer.dist)
