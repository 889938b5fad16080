"""The generator interface both architectures share: mapping (z -> ws), progressive synthesis (ws -> image).

Owns the progressive forward at (stage, alpha) with toRGB at every stage and fade_in between stages.
"""

from __future__ import annotations

import torch
from torch import nn

from ganserve.models.config import ModelConfig
from ganserve.models.layers import assert_shape, fade_in, upsample


class ProgressiveGenerator(nn.Module):
    """Base class. Subclasses build `self.blocks` (stage 1..last), `self.to_rgb` (one per stage) and implement
    `mapping`, `input_block` and `run_block`.

    `ws` is always [N, num_ws, w_dim]; `w_avg` is the truncation centre, a buffer saved with the weights.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    # -- to be provided by the architecture ------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_block(self, ws: torch.Tensor, noise: list[torch.Tensor] | None) -> torch.Tensor:
        raise NotImplementedError

    def run_block(self, stage: int, x: torch.Tensor, ws: torch.Tensor, noise: list[torch.Tensor] | None):
        raise NotImplementedError

    def noise_resolutions(self) -> list[int]:
        """Resolution of each noise input, in layer order (empty when the architecture has none)."""
        return []

    def const_noise(self) -> list[torch.Tensor]:
        """The constant noise buffers [1, 1, r, r] used by noise=const, in layer order."""
        return []

    # -- shared ------------------------------------------------------------------------------------------------
    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    @property
    def last_stage(self) -> int:
        return self.config.num_stages - 1

    def synthesis(
        self,
        ws: torch.Tensor,
        noise: list[torch.Tensor] | None = None,
        stage: int | None = None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> image [N, C, R, R] in about [-1, 1], R the stage's resolution.

        At `stage` with alpha < 1 the new stage's output fades in over the upsampled previous stage's.
        `noise` (StyleGAN): one [N, 1, r, r] map per layer, or None for the constant buffers.
        """
        stage = self.last_stage if stage is None else stage
        if not 0 <= stage <= self.last_stage:
            raise ValueError(f"stage must be in 0..{self.last_stage}, got {stage}")
        assert_shape(ws, (None, self.num_ws, self.config.w_dim), "ws")
        x = self.input_block(ws, noise)
        prev = x
        for s in range(1, stage + 1):
            prev = x
            x = self.run_block(s, x, ws, noise)
        img = self.to_rgb[stage](x)
        if stage > 0 and alpha < 1.0:
            old = upsample(self.to_rgb[stage - 1](prev), self.config.upsample_mode)
            img = fade_in(old, img, alpha)
        return img

    def forward(self, z: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """z [N, z_dim] -> image, without truncation or mixing (those live in ganserve.models.latents)."""
        return self.synthesis(self.mapping(z), stage=stage, alpha=alpha)

    @torch.no_grad()
    def estimate_w_avg(self, num_samples: int = 4096, seed: int = 0) -> None:
        """Set `w_avg` to the mean mapping output of `num_samples` latents (for models not trained here).

        Training tracks `w_avg` as an EMA instead, as NVlabs does.
        """
        z = torch.randn(num_samples, self.config.z_dim, generator=torch.Generator().manual_seed(seed))
        self.w_avg.copy_(self.mapping(z.to(self.w_avg.device))[:, 0].mean(dim=0))

    def parameter_counts(self) -> dict[str, int]:
        mapping = sum(p.numel() for n, p in self.named_parameters() if n.startswith("mapping_net."))
        total = sum(p.numel() for p in self.parameters())
        return {"mapping": mapping, "synthesis": total - mapping, "total": total}
