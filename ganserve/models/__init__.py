"""Network definitions, latents and weights I/O: everything needed to turn a seed into an image tensor.

Import from here: build_generator / build_discriminator pick the architecture named in a ModelConfig.
"""

from __future__ import annotations

from ganserve.models.config import ModelConfig
from ganserve.models.discriminator import Discriminator
from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.progan import ProGANGenerator
from ganserve.models.stylegan import StyleGANGenerator
from ganserve.models.stylegan2 import StyleGAN2Generator
from ganserve.models.stylegan3 import StyleGAN3Generator


def build_generator(config: ModelConfig) -> ProgressiveGenerator | StyleGAN2Generator | StyleGAN3Generator:
    cls = {"progan": ProGANGenerator, "stylegan": StyleGANGenerator, "stylegan2": StyleGAN2Generator,
           "stylegan3": StyleGAN3Generator}[config.arch]
    return cls(config)


def build_discriminator(config: ModelConfig) -> Discriminator:
    return Discriminator(config)


__all__ = [
    "Discriminator",
    "ModelConfig",
    "ProGANGenerator",
    "ProgressiveGenerator",
    "StyleGAN2Generator",
    "StyleGAN3Generator",
    "StyleGANGenerator",
    "build_discriminator",
    "build_generator",
]
