
"""The ProGAN paper's sliced Wasserstein distance (SWD) on Laplacian-pyramid patches; needs no downloaded network.

Owns the pyramid, 7x7 patch descriptors (128 per image per level, normalised per channel), the 4 x 128 random
projections, and the report next to the real-vs-real floor. Values are x1e3, as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ganserve.errors import UsageError

NHOOD_SIZE = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_LEVEL_RESOLUTION = 16
_GAUSS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_GAUSS = torch.outer(_GAUSS, _GAUSS) / 256.0


def level_resolutions(resolution: int) -> list[int]:
    """Pyramid levels scored: the full resolution, halving down to 16x16 (the paper's choice)."""
    levels = []
    r = resolution
    while r >= MIN_LEVEL_RESOLUTION:
        levels.append(r)
        r //= 2
    if not levels:
        m = MIN_LEVEL_RESOLUTION
        raise UsageError(f"SWD needs images of at least {m}x{m}, got {resolution}x{resolution}")
    return levels


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")  # scipy's 'mirror', as the reference implementation uses
    return F.conv2d(x, kernel.to(x)[None, None].expand(c, 1, 5, 5), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _filter(x, _GAUSS)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = torch.zeros(n, c, h * 2, w * 2, dtype=x.dtype, device=x.device)
    up[:, :, ::2, ::2] = x
    return _filter(up, _GAUSS * 4.0)


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """float [N, C, H, W] -> band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid = [x.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def _patches(level: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """7x7 neighbourhoods of each image at positions `u` [N, P, 2] in [0, 1) -> [N * P, C, 7, 7]."""
    n, c, h, w = level.shape
    per_image = u.shape[1]
    half = NHOOD_SIZE // 2
    ys = half + (u[..., 0] * (h - 2 * half)).long()
    xs = half + (u[..., 1] * (w - 2 * half)).long()
    off = torch.arange(-half, half + 1)
    rows = (ys[..., None] + off).view(n, per_image, NHOOD_SIZE, 1)  # [N, P, 7, 1]
    cols = (xs[..., None] + off).view(n, per_image, 1, NHOOD_SIZE)  # [N, P, 1, 7]
    flat = (rows * w + cols).view(n, 1, -1).expand(n, c, -1).to(level.device)
    out = level.flatten(2).gather(2, flat)  # [N, C, P*49]
    return out.view(n, c, per_image, NHOOD_SIZE, NHOOD_SIZE).transpose(1, 2).reshape(-1, c, NHOOD_SIZE, NHOOD_SIZE)


class DescriptorSet:
    """Accumulates the patch descriptors of one image set, level by level (stored as float16 to bound memory)."""

    def __init__(self, resolution: int, seed: int = 0, per_image: int = NHOODS_PER_IMAGE):
        self.levels = level_resolutions(resolution)
        self.resolution = resolution
        self.per_image = per_image
        self.seed = seed
        self.desc: list[list[torch.Tensor]] = [[] for _ in self.levels]
        self.count = 0

    def add(self, images: torch.Tensor) -> None:
        """images: uint8 or float [N, C, R, R] (pixel values; the per-channel normalisation removes the scale)."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            raise UsageError(f"expected {self.resolution}x{self.resolution} images, got {tuple(images.shape)}")
        pyramid = laplacian_pyramid(images.float(), len(self.levels))
        u = self._positions(self.count, len(images))
        for i, level in enumerate(pyramid):
            self.desc[i].append(_patches(level, u[:, i]).cpu().half())
        self.count += len(images)

    def _positions(self, start: int, n: int, block: int = 1024) -> torch.Tensor:
        """Patch positions [n, levels, P, 2] in [0, 1) of images start..start+n: a function of the image index
        (drawn in blocks of 1024 images from (seed, block)), so how a set is split into batches does not matter."""
        parts = []
        for b in range(start // block, (start + n - 1) // block + 1):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
            u = torch.rand(block, len(self.levels), self.per_image, 2, generator=g, dtype=torch.float64)
            lo, hi = max(start - b * block, 0), min(start + n - b * block, block)
            parts.append(u[lo:hi])
        return torch.cat(parts)

    def finalize(self) -> list[torch.Tensor]:
        """Per level [M, C*49] float32, each channel normalised to zero mean and unit variance."""
        out = []
        for chunks in self.desc:
            d = torch.cat(chunks).float()
            d = d - d.mean(dim=(0, 2, 3), keepdim=True)
            d = d / d.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
            out.append(d.flatten(1))
        return out


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator,
                       dir_repeats: int = DIR_REPEATS, dirs_per_repeat: int = DIRS_PER_REPEAT) -> float:
    """Mean over random unit directions of the 1-D Wasserstein distance between the projected descriptor sets."""
    if a.shape != b.shape:
        raise UsageError(f"descriptor sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    results = []
    for _ in range(dir_repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=generator)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        proj_a = torch.sort(a @ dirs, dim=0).values
        proj_b = torch.sort(b @ dirs, dim=0).values
        results.append((proj_a - proj_b).abs().mean().item())
    return sum(results) / len(results)


def swd(desc_a: DescriptorSet, desc_b: DescriptorSet, seed: int = 0) -> dict[str, float]:
    """{'<res>': SWD x1e3 per level, ..., 'avg': mean over levels} between two descriptor sets of equal size."""
    if desc_a.count != desc_b.count:
        raise UsageError(f"SWD compares sets of equal size, got {desc_a.count} and {desc_b.count} images")
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for res, a, b in zip(desc_a.levels, desc_a.finalize(), desc_b.finalize()):
        result[str(res)] = sliced_wasserstein(a, b, generator) * 1e3
    result["avg"] = sum(result.values()) / len(desc_a.levels)
    return result


def swd_between(a: Iterable[torch.Tensor] | torch.Tensor, b: Iterable[torch.Tensor] | torch.Tensor,
                resolution: int, seed: int = 0) -> dict[str, float]:
    """SWD between two image sets, each a [N, C, R, R] tensor or an iterable of such batches."""
    sets = []
    for images in (a, b):
        ds = DescriptorSet(resolution, seed=seed)  # the same patch positions in both sets
        for batch in ([images] if isinstance(images, torch.Tensor) else images):
            ds.add(batch)
        sets.append(ds)
    return swd(sets[0], sets[1], seed)
