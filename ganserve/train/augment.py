"""Differentiable augmentation of everything the discriminator sees (reals, fakes, penalty points), as in
"Differentiable Augmentation for Data-Efficient GAN Training" (Zhao et al. 2020).

Each image of a batch gets its own draw, from the step's generator, so a run stays a function of (seed, step).
Because fakes are augmented the same way as reals and the generator's gradients pass through the augmentation,
the generator learns the un-augmented distribution while the discriminator cannot memorise the few thousand
images of a small data set. Images are NCHW in [-1, 1].
"""

from __future__ import annotations

import torch

from ganserve.train.config import AUGMENTS

TRANSLATION_RATIO = 1 / 8  # shift by up to this fraction of the side, filling with 0 (mid-grey)
CUTOUT_RATIO = 1 / 2  # erase one square of this fraction of the side, to 0


def translation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by whole pixels, up to TRANSLATION_RATIO of its side in each direction."""
    n, _, h, w = x.shape
    sy, sx = max(round(h * TRANSLATION_RATIO), 1), max(round(w * TRANSLATION_RATIO), 1)
    dy = torch.randint(-sy, sy + 1, (n, 1), device=x.device, generator=gen)
    dx = torch.randint(-sx, sx + 1, (n, 1), device=x.device, generator=gen)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))  # zeros
    rows = torch.arange(h, device=x.device)[None] - dy + sy  # (n, h): source row in padded coordinates
    cols = torch.arange(w, device=x.device)[None] - dx + sx  # (n, w)
    c, wp = x.shape[1], padded.shape[-1]
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def cutout(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Erase one square of CUTOUT_RATIO of the side per image, centred anywhere in the image."""
    n, _, h, w = x.shape
    size_y, size_x = max(round(h * CUTOUT_RATIO), 1), max(round(w * CUTOUT_RATIO), 1)
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device)[None] - cy + size_y // 2  # (n, h): position inside the square
    xs = torch.arange(w, device=x.device)[None] - cx + size_x // 2
    inside = ((ys >= 0) & (ys < size_y))[:, :, None] & ((xs >= 0) & (xs < size_x))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0-2) and contrast (x0.5-1.5) per image."""
    n = x.shape[0]

    def draw() -> torch.Tensor:
        return torch.rand(n, 1, 1, 1, device=x.device, generator=gen, dtype=x.dtype)

    x = x + (draw() - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (draw() * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (draw() + 0.5) + mean


FUNCS = {"color": color, "translation": translation, "cutout": cutout}  # in AUGMENTS' order, the paper's


def augment(x: torch.Tensor, policy: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """Apply the policy's augmentations (ganserve.train.config.parse_augment) in AUGMENTS' order; channels-last
    input stays channels-last."""
    if not policy:
        return x
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    for name in AUGMENTS:
        if name in policy:
            x = FUNCS[name](x, gen)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
