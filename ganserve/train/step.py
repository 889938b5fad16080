"""One training step: a discriminator step, a generator step and the EMA update, on one minibatch of reals.

Owns the step's randomness (a generator keyed by seed, step and rank), the augmentation of D's inputs, the fakes
(mapping, w_avg tracking, style_mixing regularisation, per-layer noise), the reals faded between resolutions as
ProGAN does, and StyleGAN2's path length regularisation of G.
"""

from __future__ import annotations

import hashlib

import torch

from ganserve.devices import cpu_has_bf16
from ganserve.models.config import stage_resolution
from ganserve.models.latents import style_mixing
from ganserve.models.layers import downsample, fade_in, upsample
from ganserve.train import distributed as ddp
from ganserve.train.augment import augment
from ganserve.train.config import Phase, parse_augment
from ganserve.train.distributed import DistInfo
from ganserve.train.losses import Loss, lazy_weight, path_lengths
from ganserve.train.networks import Networks
from ganserve.train.run import ResolvedRun

PL_BATCH_SHRINK = 2  # path length regularisation runs on half the batch (StyleGAN2's pl_batch_shrink)
PL_DECAY = 0.01  # of the path lengths' running mean (StyleGAN2's pl_decay)


def amp_enabled(cfg, device: torch.device) -> bool:
    """bf16 autocast (cfg.amp) runs on CUDA and on a CPU with bfloat16 instructions (elsewhere it is emulated and
    slower than float32)."""
    return cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The RNG of one step on one rank: latents, noise, mixing and penalty weights depend on (seed, step, rank) only."""
    key = int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator(device).manual_seed(key)


class TrainStep:
    """`step(phase, batch)` trains `nets` on one minibatch with `loss` and returns the scalars to log."""

    def __init__(self, run: ResolvedRun, nets: Networks, loss: Loss, dist: DistInfo, device: torch.device):
        cfg = run.cfg
        self.nets, self.loss, self.dist, self.device = nets, loss, dist, device
        self.seed, self.z_dim = cfg.seed, run.model_config.z_dim
        self.w_avg_beta = cfg.w_avg_beta
        self.style_mixing_prob = cfg.style_mixing_prob if run.model_config.supports_mixing else 0.0
        self.ema_nimg = cfg.ema_kimg * 1000 * cfg.kimg_scale  # the EMA's half-life, scaled with the schedule
        self.channels_last = cfg.channels_last
        self.amp = amp_enabled(cfg, device)
        self.pl_weight, self.pl_interval = cfg.pl_weight, cfg.pl_interval
        self.augment = parse_augment(cfg.augment)

    def __call__(self, phase: Phase, batch: torch.Tensor) -> dict[str, float]:
        nets = self.nets
        gen = step_generator(self.seed, phase.step, self.dist.rank, self.device)
        reals = self.reals(batch, phase)
        n = reals.shape[0]

        def D(x: torch.Tensor) -> torch.Tensor:  # every input of D, in both steps, augmented alike
            return nets.D(augment(x, self.augment, gen), stage=phase.stage, alpha=phase.alpha)

        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)
        nets.G.requires_grad_(False)
        nets.D.requires_grad_(True)
        with autocast:
            with torch.no_grad():
                fakes = self.fakes(n, phase, gen)
            loss_D, stats = self.loss.d_loss(D, reals, fakes.float(), gen, phase.step)
        self._descend(loss_D, nets.D, nets.opt_D)

        nets.G.requires_grad_(True)
        nets.D.requires_grad_(False)
        with autocast:
            loss_G = self.loss.g_loss(D, self.fakes(n, phase, gen, track_w_avg=True))
            pl_weight = lazy_weight(self.pl_weight, self.pl_interval, phase.step)
            if pl_weight > 0:
                penalty, stats["pl"] = self.path_length_penalty(max(n // PL_BATCH_SHRINK, 1), phase, gen)
                loss_G = loss_G + pl_weight * penalty
        self._descend(loss_G, nets.G, nets.opt_G)

        nets.update_ema(0.5 ** (phase.batch / max(self.ema_nimg, 1e-8)))
        return {"loss_D": loss_D.item(), "loss_G": loss_G.item(), **stats}

    def path_length_penalty(self, n: int, phase: Phase, gen: torch.Generator) -> tuple[torch.Tensor, float]:
        """StyleGAN2's path length regularisation on `n` new fakes: the squared distance of each path length from
        their running mean (updated here by PL_DECAY, with the mean over all ranks, not differentiated), and the
        batch's mean length to log. The step folds it into G's loss, weighted pl_interval times on every
        pl_interval-th step, as the discriminator's penalty is."""
        G, pl_mean = self.nets.G, self.nets.pl_mean
        z = torch.randn(n, self.z_dim, device=self.device, generator=gen)
        ws = self.ws(z, phase.stage, gen, track_w_avg=False)
        img = G.synthesis(ws, self.noise(n, phase.stage, gen), stage=phase.stage, alpha=phase.alpha)
        lengths = path_lengths(img, ws, gen)
        batch_mean = ddp.all_mean(lengths.detach().mean(), self.dist)
        pl_mean.copy_(pl_mean.lerp(batch_mean, PL_DECAY))
        return (lengths - pl_mean).square().mean(), batch_mean.item()

    def _descend(self, loss: torch.Tensor, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """One optimiser step on `loss`, with the gradients averaged across ranks."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(net, self.dist)
        opt.step()

    def reals(self, batch: torch.Tensor, phase: Phase) -> torch.Tensor:
        """uint8 images -> [-1, 1], the newest resolution faded in from the one below while it fades in."""
        x = batch.to(self.device, non_blocking=True).float() / 127.5 - 1.0
        if phase.stage > 0 and phase.alpha < 1.0:
            x = fade_in(upsample(downsample(x)), x, phase.alpha)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def fakes(self, n: int, phase: Phase, gen: torch.Generator, track_w_avg: bool = False) -> torch.Tensor:
        G = self.nets.G
        z = torch.randn(n, self.z_dim, device=self.device, generator=gen)
        ws = self.ws(z, phase.stage, gen, track_w_avg)
        return G.synthesis(ws, self.noise(n, phase.stage, gen), stage=phase.stage, alpha=phase.alpha)

    def noise(self, n: int, stage: int, gen: torch.Generator) -> list[torch.Tensor] | None:
        """Per-layer random noise for the layers in use at `stage` (the constant buffers stand in for the rest)."""
        consts = self.nets.G.const_noise()
        if not consts:
            return None
        res = stage_resolution(stage)
        return [torch.randn(n, 1, c.shape[-2], c.shape[-1], device=self.device, generator=gen)
                if c.shape[-1] <= res else c for c in consts]

    def ws(self, z: torch.Tensor, stage: int, gen: torch.Generator, track_w_avg: bool) -> torch.Tensor:
        """Mapping, w_avg tracking (EMA over the batch mean, averaged across ranks) and style_mixing regularisation."""
        G = self.nets.G
        ws = G.mapping(z)
        if track_w_avg:
            with torch.no_grad():
                mean = ddp.all_mean(ws[:, 0].float().mean(dim=0), self.dist)
                G.w_avg.copy_(mean.lerp(G.w_avg, self.w_avg_beta))
        if self.style_mixing_prob > 0:
            n, num_ws = ws.shape[0], ws.shape[1]
            active = min(2 * (stage + 1), num_ws)
            cutoff = torch.randint(1, max(active, 2), (n,), device=self.device, generator=gen)
            mixed = torch.rand(n, device=self.device, generator=gen) < self.style_mixing_prob
            cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, num_ws))
            z2 = torch.randn(z.shape, device=self.device, generator=gen)
            mask = torch.arange(num_ws, device=self.device)[None] >= cutoff[:, None]
            ws = style_mixing(ws, G.mapping(z2), mask)
        return ws
