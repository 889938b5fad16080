"""What a run shows of itself in its run directory: sample grids of G_ema, the reals, the growth GIF, TensorBoard.

Owns the fixed grid latents, upsampling every stage's images to the final size, and the optional TensorBoard
writer (tensorboard is an optional extra; without it nothing is logged).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ganserve.imaging import make_grid, to_pil, to_uint8
from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.latents import seeds_to_z
from ganserve.schema import parse_seeds
from ganserve.train.run import ResolvedRun

SAMPLES_DIR = "samples"
GROWTH_GIF = "growth.gif"


class RunOutputs:
    """Samples of `G_ema` and TensorBoard logs under the run directory."""

    def __init__(self, run: ResolvedRun, G_ema: ProgressiveGenerator, device: torch.device):
        self.G_ema, self.device, self.schedule = G_ema, device, run.schedule
        self.resolution = run.model_config.resolution
        self.samples = run.run_dir / SAMPLES_DIR
        self.tensorboard_dir = run.run_dir / "tensorboard"
        self.grid_z = torch.from_numpy(seeds_to_z(parse_seeds(run.cfg.grid_seeds), run.model_config.z_dim))
        self.writer = None

    @torch.no_grad()
    def sample_grid(self, nimg: int) -> np.ndarray:
        """G_ema on the fixed grid seeds at the schedule position `nimg`, upsampled to the final size."""
        stage, alpha = self.schedule.stage_alpha(nimg)
        z = self.grid_z.to(self.device)
        img = self.G_ema.synthesis(self.G_ema.mapping(z), stage=stage, alpha=alpha).float()
        img = F.interpolate(img, size=self.resolution, mode="nearest")
        return make_grid(to_uint8(img).cpu().numpy())

    def save_grid(self, nimg: int) -> None:
        grid = self.sample_grid(nimg)
        self.samples.mkdir(parents=True, exist_ok=True)
        to_pil(grid).save(self.samples / f"fakes-{nimg:010d}.png")
        if self.writer is not None:
            self.writer.add_image("samples", grid, nimg, dataformats="HWC")

    def save_reals(self, reals: torch.Tensor) -> None:
        """A grid of the first uint8 images of `reals`, as many as the sample grids hold."""
        self.samples.mkdir(parents=True, exist_ok=True)
        to_pil(make_grid(reals[: len(self.grid_z)].permute(0, 2, 3, 1).numpy())).save(self.samples / "reals.png")

    def save_growth_gif(self, max_frames: int = 120) -> Path | None:
        frames = sorted(self.samples.glob("fakes-*.png"))
        if not frames:
            return None
        frames = [frames[round(i)] for i in np.linspace(0, len(frames) - 1, min(max_frames, len(frames)))]
        images = [Image.open(f).convert("RGB") for f in frames]
        if images[0].width > 1024:
            size = (1024, round(images[0].height * 1024 / images[0].width))
            images = [im.resize(size, Image.Resampling.LANCZOS) for im in images]
        path = self.samples / GROWTH_GIF
        images[0].save(path, save_all=True, append_images=images[1:], duration=400, loop=0)
        return path

    # -- TensorBoard ---------------------------------------------------------------------------------------------
    def open_writer(self, nimg: int) -> None:
        """Start logging at `nimg` (events logged after it by an earlier process are dropped)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=nimg or None)

    def log(self, group: str, scalars: dict[str, float], nimg: int) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{group}/{k}", v, nimg)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
