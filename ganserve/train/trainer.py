"""The training loop: the run's steps in order, checkpoints along the way and the servable model at the end.

Composes the parts: the run resolved before it starts (run.py), its data (data.py), networks and optimisers
(networks.py), the step (step.py) with the loss chosen once (losses.py), samples and logs (outputs.py) and
checkpoints (checkpoint.py). Owns the progress bar, when to checkpoint and to stop (Ctrl-C, stop_after_steps),
the training speed, the training summary and rank-0-only writes.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ganserve.devices import keep_freed_memory, resolve_device
from ganserve.models.config import ModelConfig, stage_resolution
from ganserve.models.weights import save_model
from ganserve.train import distributed as ddp
from ganserve.train.checkpoint import Progress, checkpoint_path, save_checkpoint, set_rng_state, training_state
from ganserve.train.config import CONFIG_NAME, Phase, TrainConfig
from ganserve.train.data import TrainingData
from ganserve.train.evaluate import evaluate_swd
from ganserve.train.losses import make_loss
from ganserve.train.networks import Networks
from ganserve.train.outputs import RunOutputs
from ganserve.train.run import resolve
from ganserve.train.step import TrainStep

MODEL_DIR = "model"


class Speed:
    """Images per second: a running average for the progress bar, and the images and seconds at the final
    resolution added to `progress`, leaving out each process's and the stage's warm-up step."""

    def __init__(self, progress: Progress, final_stage: int, final_start: int):
        self.progress, self.final_stage, self.final_start = progress, final_stage, final_start
        self.rate, self.steps, self._last = 0.0, 0, time.perf_counter()

    def tick(self, phase: Phase) -> None:
        """Account for the step `phase` that just ended."""
        now = time.perf_counter()
        dt, self._last = now - self._last, now
        self.progress.elapsed += dt
        self.rate = phase.batch / dt if self.rate == 0 else 0.9 * self.rate + 0.1 * phase.batch / dt
        if phase.stage == self.final_stage and self.steps > 0 and phase.nimg > self.final_start + phase.batch:
            self.progress.final_imgs += phase.batch
            self.progress.final_time += dt
        self.steps += 1

    def final_rate(self) -> float:
        """The speed at the final resolution, over this run and the ones it resumed (else the running average)."""
        p = self.progress
        return p.final_imgs / p.final_time if p.final_time else self.rate


class Trainer:
    """One run. `Trainer(cfg).train()` starts or, with `resume`, continues it; returns the model directory.

    `cfg` is left unchanged: the run's complete config is `self.cfg` (see ganserve.train.run.resolve)."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None,
                 resume_overrides: dict[str, Any] | None = None):
        self.dist, self.device = ddp.init_distributed(resolve_device(cfg.device))
        if self.device.type == "cpu":
            keep_freed_memory()  # fewer page faults per step (benchmarks/README.md: 190 vs 197-210 s for a resume)
        run = resolve(cfg, resume, resume_overrides, self.dist)
        self.cfg, self.run_dir, self.model_config, self.schedule = run.cfg, run.run_dir, run.model_config, run.schedule
        self.data = TrainingData(self.cfg, self.model_config.num_stages)
        self.nets = Networks(run, self.device)  # every rank builds the same weights, then takes rank 0's anyway
        self.progress = Progress()
        if run.checkpoint is not None:
            self.nets.load_state_dict(run.checkpoint)
            self.progress = Progress.from_checkpoint(run.checkpoint)
            set_rng_state(run.checkpoint["rng"])
        self.nets.broadcast(self.dist)
        self.train_step = TrainStep(run, self.nets, make_loss(self.cfg), self.dist, self.device)
        self.outputs = RunOutputs(run, self.nets.G_ema, self.device)
        self._stop = False

    def save_checkpoint(self) -> Path | None:
        """On rank 0: the checkpoint at the current position, and its sample grid."""
        if not self.dist.is_main:
            return None
        nimg = self.progress.nimg
        stage, alpha = self.schedule.stage_alpha(nimg)
        state = training_state(self.nets.state_dict(), self.progress, stage, alpha,
                               json.dumps(self.cfg.to_dict()), json.dumps(self.model_config.to_dict()))
        path = save_checkpoint(checkpoint_path(self.run_dir, nimg), state, keep=self.cfg.keep_checkpoints)
        self.outputs.save_grid(nimg)
        return path

    def train(self, stop_after_steps: int | None = None) -> Path | None:
        """Run to the end of the schedule (or `stop_after_steps` more steps); returns the model directory.

        Ctrl-C finishes the current step, writes a checkpoint and stops (resume with --resume)."""
        previous_sigint = None
        if threading.current_thread() is threading.main_thread():
            previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return self._run(stop_after_steps)
        finally:
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)

    def _on_sigint(self, signum, frame) -> None:
        self._stop = True

    def _run(self, stop_after_steps: int | None) -> Path | None:
        from tqdm import tqdm

        cfg, progress, main = self.cfg, self.progress, self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / CONFIG_NAME)
            if progress.nimg == 0:
                self.outputs.save_reals(self.data.pyramid[-1])
            if cfg.tensorboard:
                self.outputs.open_writer(progress.nimg)
        batches = self.data.batches(self.schedule, progress.step, progress.nimg, self.dist.rank, self.dist.world_size)
        bar = tqdm(total=self.schedule.total_nimg, initial=progress.nimg, unit="img", unit_scale=True,
                   disable=not (cfg.progress and main), dynamic_ncols=True)
        final_stage = self.model_config.num_stages - 1
        speed = Speed(progress, final_stage, self.schedule.start[final_stage])
        stats: dict[str, float] = {}
        try:
            for phase, batch in batches:
                stats = self.train_step(phase, batch)
                progress.step, progress.nimg = phase.step + 1, phase.nimg + phase.batch
                speed.tick(phase)
                self._report(bar, phase, stats, speed.rate)
                if self._checkpoint_due(phase):
                    self.save_checkpoint()
                if self._stop or (stop_after_steps is not None and speed.steps >= stop_after_steps):
                    if progress.nimg < self.schedule.total_nimg:
                        self.save_checkpoint()
                        if main:
                            bar.write(f"stopped at kimg {progress.nimg / 1000:.1f}; "
                                      f"continue with --resume {self.run_dir}")
                        return None
        finally:
            bar.close()
        return self._finish(speed.final_rate(), stats)

    def _report(self, bar, phase: Phase, stats: dict[str, float], rate: float) -> None:
        """The progress bar after the step `phase`, and every tenth step's scalars in TensorBoard."""
        nimg, res = self.progress.nimg, stage_resolution(phase.stage)
        bar.update(phase.batch)
        where = f"stage {phase.stage} alpha {phase.alpha:.2f} " if self.schedule.progressive else ""
        bar.set_postfix_str(f"{res}x{res} {where}kimg {nimg / 1000:.1f} D {stats['loss_D']:.3f} "
                            f"G {stats['loss_G']:.3f} {rate:.0f} img/s", refresh=False)
        if phase.step % 10 == 0:
            self.outputs.log("train", {**stats, "alpha": phase.alpha, "stage": phase.stage, "img_per_s": rate}, nimg)

    def _checkpoint_due(self, phase: Phase) -> bool:
        """After the step `phase`: at the end of a stage, or on crossing a multiple of checkpoint_kimg."""
        nimg, every = self.progress.nimg, max(1, round(self.cfg.checkpoint_kimg * 1000))
        stage_end = nimg >= self.schedule.total_nimg or self.schedule.stage_alpha(nimg)[0] != phase.stage
        return stage_end or nimg // every != phase.nimg // every

    def _finish(self, rate: float, stats: dict[str, float]) -> Path | None:
        """Digests (DDP), then on rank 0: the model directory with its training summary, and the growth GIF.

        `rate` is the training speed at the final resolution, in images per second."""
        if self.dist.enabled:
            digests = self.run_dir / "digests"
            digests.mkdir(parents=True, exist_ok=True)
            (digests / f"rank{self.dist.rank}.txt").write_text(self.nets.digest() + "\n")
        if not self.dist.is_main:
            self.outputs.close()
            return None
        summary = self._summary(rate, stats)
        config = ModelConfig.from_dict({**self.model_config.to_dict(), "training": summary,
                                        "license": self.cfg.license})
        model_dir = save_model(self.nets.G_ema, self.run_dir / MODEL_DIR, config)
        self.outputs.save_growth_gif()
        self.outputs.close()
        return model_dir

    def _summary(self, rate: float, stats: dict[str, float]) -> dict[str, Any]:
        """The training summary stored in the model's config.json, with the final SWD (logged too)."""
        cfg, progress = self.cfg, self.progress
        summary: dict[str, Any] = {
            "dataset": Path(cfg.data).name, "images": self.data.num_images, "kimg": round(progress.nimg / 1000, 3),
            "steps": progress.step, "time_s": round(progress.elapsed, 1), "loss": cfg.loss, "seed": cfg.seed,
            "kimg_scale": cfg.kimg_scale,
        }
        if rate > 0:  # unknown when a run resumed from an older checkpoint ends without a step
            summary["img_per_s"] = round(rate, 1)
        if cfg.metric_num > 0:
            result = evaluate_swd(self.nets.G_ema, self.data.pyramid[-1], cfg.metric_num, device=self.device,
                                  seed=cfg.seed)
            summary.update(swd_x1e3=round(result["fake"]["avg"], 3), swd_floor_x1e3=round(result["floor"]["avg"], 3),
                           swd_num=result["num"])
            self.outputs.log("swd", result["fake"], progress.nimg)
        if stats and all(math.isfinite(v) for v in stats.values()):
            summary["final_loss_D"] = round(stats["loss_D"], 4)
        return summary


def train(cfg: TrainConfig, resume: str | Path | None = None, stop_after_steps: int | None = None,
          resume_overrides: dict[str, Any] | None = None) -> Path | None:
    """Train (or resume) a run; returns the servable model directory, or None when stopped early / not rank 0."""
    trainer = Trainer(cfg, resume, resume_overrides)
    try:
        return trainer.train(stop_after_steps)
    finally:
        ddp.shutdown(trainer.dist)
