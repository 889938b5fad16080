"""Interpolations between seeds: the specs of the frames of a walk through several seeds' latents, for any backend.

Owns the choice of the space walked (w: straight steps between the seeds' ws as the backend feeds them to synthesis,
truncation and mixing applied; z: great-circle steps between the seeds' zs, mapped, truncated and mixed per frame)
and which image parameters go where. The frames are ordinary SampleSpecs (a z or w in place of the seed), so a walk
runs through Backend.generate like any request; the first frame is the first seed's image bit for bit, and so is
the last seed's the last frame of an open walk.
"""

from __future__ import annotations

from collections.abc import Sequence

from ganserve.errors import SpecError, UnsupportedError
from ganserve.inference.backend import Backend
from ganserve.inference.sampling import SampleSpec, make_latent_specs, make_specs
from ganserve.models.config import ModelConfig
from ganserve.models.latents import seeds_to_z, walk
from ganserve.schema import LATENT_PARAMS, LATENT_SPACES, check_seed  # LATENT_PARAMS: what decides a seed's ws


def default_space(config: ModelConfig) -> str:
    """w for a StyleGAN model (its ws are where straight steps look even), z for ProGAN (its only latent)."""
    return "w" if config.supports_mixing else "z"


def walk_frames(n_seeds: int, steps: int, loop: bool) -> int:
    """How many frames a walk through `n_seeds` seeds with `steps` frames per leg has."""
    legs = n_seeds if loop else n_seeds - 1
    return legs * (steps - 1) + (0 if loop else 1)


def check_walk(config: ModelConfig, seeds: Sequence[int], steps: int, space: str | None,
               noise: str | None = None) -> str:
    """The space to walk (`space`, or the model's default) after checking the seeds, steps, space and noise against
    the model; SpecError naming the field (UnsupportedError for space w on ProGAN)."""
    if noise == "random":
        raise SpecError("noise=random draws each image's noise from its seed, and the frames between seeds have "
                        "none: use noise const or none", field="noise")
    if len(seeds) < 2:
        raise SpecError(f"an interpolation needs at least 2 seeds to walk between, got {len(seeds)}", field="seeds")
    for s in seeds:
        check_seed(s)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise SpecError(f"steps (frames per leg, both ends included) must be an integer of at least 2, got {steps!r}",
                        field="steps")
    space = default_space(config) if space is None else space
    if space not in LATENT_SPACES:
        raise SpecError(f"space must be one of {', '.join(LATENT_SPACES)}, got {space!r}", field="space")
    if space == "w" and not config.supports_mixing:
        raise UnsupportedError(f"space w needs a StyleGAN model; this one is {config.arch}, which has no w space: "
                               "walk in z", field="space")
    return space


def interpolation_specs(backend: Backend, seeds: Sequence[int], steps: int, space: str | None = None,
                        loop: bool = True, **params) -> list[SampleSpec]:
    """The frames of a walk through `seeds` in order, as specs for `backend`: `steps` frames from each seed to the
    next (both ends included; a seed is one frame where two legs meet), and with `loop` a last leg back towards the
    first seed that stops one frame short of it, so the frames repeat seamlessly.

    `space` (default: w for StyleGAN, z for ProGAN): "w" lerps between the ws `backend.latents` gives for the seeds
    with `params`' psi, truncation_cutoff, mixing and class (frames are w specs with the other parameters: noise const
    or none, rotate, translate); "z" slerps between the seeds' zs (frames are z specs with all of `params`). Frame 0
    is seeds[0]'s image with the same parameters, bit for bit (on the CPU backends that promise same pixels), and
    the last frame of an open walk is seeds[-1]'s. SpecError/UnsupportedError name the parameter at fault."""
    config = backend.config
    seeds = list(seeds)
    space = check_walk(config, seeds, steps, space, params.get("noise"))
    if space == "z":
        make_specs(config, seeds[:1], **params)  # the parameters checked as for the seeds' own images
        frames = walk(list(seeds_to_z(seeds, config.z_dim)), steps, "z", loop)
        return make_latent_specs(config, z=frames, **params)
    style = {k: v for k, v in params.items() if k in LATENT_PARAMS}
    rest = {k: v for k, v in params.items() if k not in LATENT_PARAMS}
    make_specs(config, seeds[:1], **params)  # all of them checked together, as for the seeds' own images
    ws = backend.latents(make_specs(config, seeds, **style))
    frames = walk(list(ws), steps, "w", loop)
    return make_latent_specs(config, w=frames, **rest)
