"""Network definitions, latents and weights I/O: everything needed to turn a seed into an image tensor.

Import from here: build_generator / build_discriminator pick the architecture named in a ModelConfig. The networks
(and torch) are imported on first use, so that the torch-free parts (config, latents, weights' config and names)
load quickly in a process that runs an exported model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ganserve.models.config import ModelConfig

if TYPE_CHECKING:
    from ganserve.models.discriminator import Discriminator
    from ganserve.models.generator import ProgressiveGenerator
    from ganserve.models.stylegan2 import StyleGAN2Generator
    from ganserve.models.stylegan2_discriminator import StyleGAN2Discriminator
    from ganserve.models.stylegan3 import StyleGAN3Generator

_LAZY = {
    "Discriminator": "ganserve.models.discriminator",
    "ProgressiveGenerator": "ganserve.models.generator",
    "ProGANGenerator": "ganserve.models.progan",
    "StyleGANGenerator": "ganserve.models.stylegan",
    "StyleGAN2Generator": "ganserve.models.stylegan2",
    "StyleGAN2Discriminator": "ganserve.models.stylegan2_discriminator",
    "StyleGAN3Generator": "ganserve.models.stylegan3",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_generator(config: ModelConfig) -> ProgressiveGenerator | StyleGAN2Generator | StyleGAN3Generator:
    cls = {"progan": "ProGANGenerator", "stylegan": "StyleGANGenerator", "stylegan2": "StyleGAN2Generator",
           "stylegan3": "StyleGAN3Generator"}[config.arch]
    return __getattr__(cls)(config)


def build_discriminator(config: ModelConfig, grow: bool | None = None) -> Discriminator | StyleGAN2Discriminator:
    """ProGAN's progressive discriminator for ProGAN and StyleGAN, and for a StyleGAN2 that grows (`grow`); the
    residual one for StyleGAN2 at its full resolution (training only)."""
    if config.arch not in ("progan", "stylegan", "stylegan2"):
        raise ValueError(f"no discriminator for arch {config.arch!r}: it is not trained here")
    grow = config.arch != "stylegan2" if grow is None else grow
    return __getattr__("Discriminator" if grow else "StyleGAN2Discriminator")(config)


__all__ = [
    "Discriminator",
    "ModelConfig",
    "ProGANGenerator",
    "ProgressiveGenerator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "StyleGAN3Generator",
    "StyleGANGenerator",
    "build_discriminator",
    "build_generator",
]
