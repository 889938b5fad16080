"""The two GAN objectives: wgan_gp with drift (ProGAN) and the non-saturating logistic loss with r1 (StyleGAN).

Owns the discriminator and generator losses and their gradient penalties (and StyleGAN2's path lengths, which the
step penalises); each returns scalars to log. The Loss
classes bind a loss to its config values, including lazy regularisation (the penalty on every `interval`-th step
only, weighted `interval` times, as StyleGAN2 does); make_loss picks one from a TrainConfig.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ganserve.train.config import TrainConfig

Critic = Callable[[torch.Tensor], torch.Tensor]


def _grad_norm_sq(D: Critic, x: torch.Tensor) -> torch.Tensor:
    """||dD(x)/dx||^2 per sample, differentiable (for the penalties)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).float().sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1)


def wgan_gp_d_loss(
    D: Critic, reals: torch.Tensor, fakes: torch.Tensor, gp_lambda: float = 10.0, drift: float = 0.001,
    gp_target: float = 1.0, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """D(fake) - D(real) + lambda (||grad D(x_hat)|| - target)^2 / target^2 + drift * D(real)^2 (ProGAN sec. A.1).

    gp_lambda 0 skips the penalty's double backward (and leaves "gp" out of the stats); the interpolation weights are
    drawn either way, so the rest of the step draws the same numbers."""
    real_score, fake_score = D(reals).float(), D(fakes).float()
    eps = torch.rand(reals.shape[0], 1, 1, 1, device=reals.device, generator=generator, dtype=reals.dtype)
    loss = fake_score - real_score
    stats = {"D_real": real_score.mean().item(), "D_fake": fake_score.mean().item()}
    if gp_lambda > 0:
        gp = (_grad_norm_sq(D, torch.lerp(reals, fakes, eps)).sqrt() - gp_target).square() / gp_target**2
        loss = loss + gp_lambda * gp
        stats["gp"] = gp.mean().item()
    loss = loss + drift * real_score.square()
    return loss.mean(), stats


def wgan_g_loss(D: Critic, fakes: torch.Tensor) -> torch.Tensor:
    return -D(fakes).float().mean()


def logistic_r1_d_loss(
    D: Critic, reals: torch.Tensor, fakes: torch.Tensor, r1_gamma: float = 10.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """softplus(D(fake)) + softplus(-D(real)) + gamma/2 ||grad D(real)||^2 (StyleGAN: non-saturating + r1); gamma 0
    skips the penalty (and leaves "r1" out of the stats)."""
    fake_score = D(fakes).float()
    if r1_gamma > 0:
        reals = reals.detach().requires_grad_(True)
    real_score = D(reals).float()
    loss = F.softplus(fake_score) + F.softplus(-real_score)
    stats = {"D_real": real_score.mean().item(), "D_fake": fake_score.mean().item()}
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_score.sum(), reals, create_graph=True)
        r1 = grad.float().square().flatten(1).sum(1)
        loss = loss + r1 * (r1_gamma / 2)
        stats["r1"] = r1.mean().item()
    return loss.mean(), stats


def logistic_g_loss(D: Critic, fakes: torch.Tensor) -> torch.Tensor:
    """Non-saturating: softplus(-D(G(z)))."""
    return F.softplus(-D(fakes).float()).mean()


def path_lengths(img: torch.Tensor, ws: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """StyleGAN2's path lengths, per sample, differentiable: ||J_w^T y|| for the Jacobian J_w of the images with
    respect to the styles and y a random image of N(0, 1) pixels scaled by 1/sqrt(H W); the squared norm is summed
    over w's entries and averaged over the style inputs. `ws` must be what `img` was computed from."""
    y = torch.randn(img.shape, device=img.device, generator=generator) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img.float() * y).sum(), ws, create_graph=True)
    return grad.float().square().sum(2).mean(1).sqrt()


def lazy_weight(weight: float, interval: int, step: int) -> float:
    """A penalty's weight at `step` under lazy regularisation: `interval` times `weight` on its steps, 0 between."""
    return weight * interval if step % interval == 0 else 0.0


class Loss(Protocol):
    """A GAN objective: the discriminator's loss (with its penalty) and the generator's."""

    def d_loss(self, D: Critic, reals: torch.Tensor, fakes: torch.Tensor, generator: torch.Generator,
               step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def g_loss(self, D: Critic, fakes: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class WGANGP:
    """wgan_gp_d_loss / wgan_g_loss; the penalty's interpolation weights come from the step's generator, the penalty
    on the steps that are multiples of `interval`, weighted `interval` times."""

    gp_lambda: float = 10.0
    drift: float = 0.001
    gp_target: float = 1.0
    interval: int = 1

    def d_loss(self, D: Critic, reals: torch.Tensor, fakes: torch.Tensor, generator: torch.Generator,
               step: int) -> tuple[torch.Tensor, dict[str, float]]:
        gp_lambda = lazy_weight(self.gp_lambda, self.interval, step)
        return wgan_gp_d_loss(D, reals, fakes, gp_lambda, self.drift, self.gp_target, generator)

    def g_loss(self, D: Critic, fakes: torch.Tensor) -> torch.Tensor:
        return wgan_g_loss(D, fakes)


@dataclass(frozen=True)
class LogisticR1:
    """logistic_r1_d_loss / logistic_g_loss; draws no random numbers; r1 on the steps that are multiples of
    `interval`, weighted `interval` times."""

    r1_gamma: float = 10.0
    interval: int = 1

    def d_loss(self, D: Critic, reals: torch.Tensor, fakes: torch.Tensor, generator: torch.Generator,
               step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return logistic_r1_d_loss(D, reals, fakes, lazy_weight(self.r1_gamma, self.interval, step))

    def g_loss(self, D: Critic, fakes: torch.Tensor) -> torch.Tensor:
        return logistic_g_loss(D, fakes)


def make_loss(cfg: TrainConfig) -> Loss:
    """The Loss named by cfg.loss, with cfg's penalty weights."""
    if cfg.loss == "wgan_gp":
        return WGANGP(cfg.gp_lambda, cfg.drift, cfg.gp_target, cfg.reg_interval)
    return LogisticR1(cfg.r1_gamma, cfg.reg_interval)  # "logistic", the only other loss TrainConfig accepts
