"""The networks of a run and their optimisers: G, D, the EMA generator G_ema, and one Adam each for G and D.

Owns building them from the run's config, their state dicts under the checkpoint's key names, the EMA update,
the start-of-run broadcast from rank 0 and the weights digest that DDP ranks compare.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import torch

from ganserve.models import build_discriminator, build_generator
from ganserve.train import distributed as ddp
from ganserve.train.distributed import DistInfo
from ganserve.train.run import ResolvedRun

NETWORKS = ("G", "D", "G_ema")
OPTIMIZERS = ("opt_G", "opt_D")


def state_digest(*state_dicts: dict[str, torch.Tensor]) -> str:
    """sha256 over state dicts (parameters and buffers), used to check that DDP ranks hold the same weights."""
    h = hashlib.sha256()
    for sd in state_dicts:
        for name, t in sorted(sd.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Networks:
    """G, D and G_ema on `device`, built from the global RNG seeded with the run's seed, and their optimisers."""

    def __init__(self, run: ResolvedRun, device: torch.device):
        cfg = run.cfg
        torch.manual_seed(cfg.seed)
        self.G = build_generator(run.model_config).to(device)
        self.D = build_discriminator(run.model_config, grow=cfg.grow).to(device)
        if cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.lr = cfg.lr
        opt = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
        self.opt_G = torch.optim.Adam(self.G.parameters(), **opt)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **opt)
        # The running mean of the path lengths (StyleGAN2's path length regularisation; only kept when it is on).
        self.pl_mean: torch.Tensor | None = torch.zeros([], device=device) if cfg.pl_weight > 0 else None

    def state_dict(self) -> dict[str, Any]:
        """{"G", "D", "G_ema", "opt_G", "opt_D"}: each one's state dict, in the checkpoint's order; and "pl_mean"
        with path length regularisation."""
        state = {name: getattr(self, name).state_dict() for name in NETWORKS + OPTIMIZERS}
        if self.pl_mean is not None:
            state["pl_mean"] = self.pl_mean.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the state dicts of `state` (a checkpoint holds them among its other entries). The optimisers keep
        their moments but take the learning rate of this run's config (a resume may change it)."""
        for name in NETWORKS + OPTIMIZERS:
            getattr(self, name).load_state_dict(state[name])
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = self.lr
        if self.pl_mean is not None:
            self.pl_mean.copy_(state["pl_mean"])

    def broadcast(self, dist: DistInfo) -> None:
        """Every rank takes rank 0's weights and buffers."""
        for name in NETWORKS:
            ddp.broadcast_module(getattr(self, name), dist)

    @torch.no_grad()
    def update_ema(self, beta: float) -> None:
        """G_ema's parameters move to G's by a factor 1 - beta; its buffers (w_avg, noise) are copied."""
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def digest(self) -> str:
        """state_digest of G, D and G_ema."""
        return state_digest(*(getattr(self, name).state_dict() for name in NETWORKS))
