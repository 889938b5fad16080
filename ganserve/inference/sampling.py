"""From per-image requests (seed, psi, mixing, noise, class, StyleGAN3 rotate/translate) to uint8 images, in
batches, on any generator backend.

Owns SampleSpec validation against a model (make_spec; the checks that need no model are in ganserve.schema), the
host-side batch inputs (z, class labels, z_mix, psi rows, mix masks, noise, input transforms) and the eager run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ganserve.errors import SpecError, UnsupportedError, UsageError
from ganserve.imaging import to_uint8
from ganserve.models.config import ModelConfig
from ganserve.models.latents import (
    noise_for_seed,
    parse_layers,
    seeds_to_z,
    style_mixing,
    truncation,
    truncation_psi_rows,
)
from ganserve.models.stylegan3 import image_transform
from ganserve.schema import (
    DEFAULT_MIX_LAYERS,
    check_noise,
    check_psi,
    check_rotate,
    check_seed,
    check_translate,
)


@dataclass(frozen=True)
class SampleSpec:
    """One image: everything that determines its pixels besides the model."""

    seed: int
    psi: float = 1.0
    mix_seed: int | None = None
    mix_layers: tuple[int, ...] = ()
    noise: str = "const"
    truncation_cutoff: int | None = None
    class_idx: int | None = None  # the class label of a class-conditional model (c_dim > 0), else None
    rotate: float = 0.0  # StyleGAN3: degrees counter-clockwise
    translate: tuple[float, float] = (0.0, 0.0)  # StyleGAN3: (x, y) in units of the image

    @property
    def transformed(self) -> bool:
        return self.rotate != 0 or self.translate != (0.0, 0.0)


def check_class(class_idx: object, c_dim: int) -> int | None:
    """The class label as an int in [0, c_dim) for a conditional model, None for an unconditional one; SpecError
    (field "class") when it is missing, out of range, or given to an unconditional model. As NVlabs' gen_images.py,
    a conditional model needs a class: there is no default label."""
    if class_idx is None:
        if c_dim:
            raise SpecError(f"this model is class-conditional ({c_dim} classes): give a class in [0, {c_dim - 1}]",
                            field="class")
        return None
    if not c_dim:
        raise SpecError(f"this model is not class-conditional (c_dim=0): leave out class, got {class_idx!r}",
                        field="class")
    if isinstance(class_idx, str) and class_idx.strip().isdigit():
        class_idx = int(class_idx)
    if isinstance(class_idx, bool) or not isinstance(class_idx, (int, np.integer)) or not 0 <= class_idx < c_dim:
        raise SpecError(f"class must be an integer in [0, {c_dim - 1}] for this model ({c_dim} classes), "
                        f"got {class_idx!r}", field="class")
    return int(class_idx)


def make_spec(
    config: ModelConfig,
    seed: int,
    psi: float = 1.0,
    mix_seed: int | None = None,
    mix_layers: str | Sequence[int] | None = None,
    noise: str = "const",
    truncation_cutoff: int | None = None,
    class_idx: int | None = None,
    rotate: float | None = None,
    translate: tuple[float, float] | str | None = None,
) -> SampleSpec:
    """Validate one image's parameters (ganserve.schema.SPEC_PARAMS) against a model; raises SpecError naming the
    field, UnsupportedError for style mixing on a model without a w space. The one check of a request against its
    model: the CLI, the library and the server (ganserve.serve.params.make_job) all come here."""
    seed = check_seed(seed)
    psi = check_psi(psi)
    layers: tuple[int, ...] = ()
    if mix_seed is not None or mix_layers is not None:
        if not config.supports_mixing:
            raise UnsupportedError(
                f"style mixing needs a StyleGAN model; this one is {config.arch} (it has no w space)",
                field="mix_seed" if mix_seed is not None else "mix_layers",
            )
        layers = parse_layers(DEFAULT_MIX_LAYERS if mix_layers is None else mix_layers, config)
        if mix_seed is None:
            raise SpecError("mix_layers was given without mix_seed", field="mix_seed")
        mix_seed = check_seed(mix_seed, "mix_seed")
    if truncation_cutoff is not None:
        truncation_psi_rows([psi], config.num_ws, truncation_cutoff)  # validates the cutoff
    class_idx = check_class(class_idx, config.c_dim)
    rotate, translate = check_rotate(rotate), check_translate(translate)
    if (rotate != 0 or translate != (0.0, 0.0)) and config.arch != "stylegan3":
        field = "rotate" if rotate != 0 else "translate"
        raise SpecError(f"{field} needs a StyleGAN3 model (its input can be rotated and shifted); this one is "
                        f"{config.arch}", field=field)
    noise = check_noise(noise)
    return SampleSpec(seed, psi, mix_seed, layers, noise, truncation_cutoff, class_idx, rotate, translate)


def make_specs(config: ModelConfig, seeds: Sequence[int], **params) -> list[SampleSpec]:
    """The same parameters for many seeds (validated once)."""
    if not seeds:
        return []
    first = make_spec(config, seeds[0], **params)
    return [first] + [dataclasses.replace(first, seed=check_seed(s)) for s in seeds[1:]]


@dataclass
class BatchInputs:
    """Host-side arrays for one batch; row i belongs to specs[i]."""

    z: np.ndarray  # [N, z_dim] float32
    psi: np.ndarray  # [N, num_ws] float32 (1 where not truncated)
    z_mix: np.ndarray | None = None  # [N, z_dim], only when some sample mixes
    mix_mask: np.ndarray | None = None  # [N, num_ws] bool
    noise: list[np.ndarray] | None = None  # per layer [N, 1, r, r], only when some sample wants random or no noise
    noise_random: np.ndarray | None = None  # [N] bool: rows whose noise comes from `noise`, others use the buffers
    c: np.ndarray | None = None  # [N, c_dim] float32 one-hot class labels, only for class-conditional models
    transform: np.ndarray | None = None  # [N, 3, 3] float32 StyleGAN3 input transforms, only when some row has one

    def __len__(self) -> int:
        return len(self.z)


def prepare_batch(specs: Sequence[SampleSpec], config: ModelConfig, noise_resolutions: Sequence[int]) -> BatchInputs:
    n, num_ws = len(specs), config.num_ws
    psi = np.ones((n, num_ws), np.float32)
    for i, s in enumerate(specs):
        psi[i] = truncation_psi_rows([s.psi], num_ws, s.truncation_cutoff)[0]
    inputs = BatchInputs(z=seeds_to_z([s.seed for s in specs], config.z_dim), psi=psi)
    if config.c_dim:
        inputs.c = np.zeros((n, config.c_dim), np.float32)
        inputs.c[np.arange(n), [check_class(s.class_idx, config.c_dim) for s in specs]] = 1
    if any(s.mix_seed is not None for s in specs):
        inputs.z_mix = seeds_to_z([s.seed if s.mix_seed is None else s.mix_seed for s in specs], config.z_dim)
        inputs.mix_mask = np.zeros((n, num_ws), bool)
        for i, s in enumerate(specs):
            inputs.mix_mask[i, list(s.mix_layers)] = True
    if any(s.transformed for s in specs):
        inputs.transform = np.stack([image_transform(s.rotate, s.translate) for s in specs])
    if noise_resolutions and any(s.noise != "const" for s in specs):
        inputs.noise_random = np.array([s.noise != "const" for s in specs])  # noise=none: the zero maps below
        per_sample = [
            noise_for_seed(s.seed, noise_resolutions) if s.noise == "random" else None for s in specs
        ]
        inputs.noise = [
            np.stack([p[k] if p is not None else np.zeros((1, r, r), np.float32) for p in per_sample])
            for k, r in enumerate(noise_resolutions)
        ]
    return inputs


def iter_batches(specs: Sequence[SampleSpec], batch_size: int) -> Iterator[Sequence[SampleSpec]]:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    for i in range(0, len(specs), batch_size):
        yield specs[i : i + batch_size]


def batch_styles(mapping, w_avg: torch.Tensor, inputs: BatchInputs, device: torch.device | str) -> torch.Tensor:
    """ws [N, num_ws, w_dim] for one batch: `mapping` (z -> ws, or (z, c) -> ws for a class-conditional model; any
    backend), then truncation and style_mixing. The mix seed's ws are mapped with the row's own class."""
    z = torch.from_numpy(inputs.z).to(device)
    c = None if inputs.c is None else torch.from_numpy(inputs.c).to(device)
    if inputs.z_mix is not None:
        z = torch.cat([z, torch.from_numpy(inputs.z_mix).to(device)])
        c = None if c is None else torch.cat([c, c])
    ws = mapping(z) if c is None else mapping(z, c)
    ws, ws_mix = ws.chunk(2) if inputs.z_mix is not None else (ws, None)
    psi = torch.from_numpy(inputs.psi).to(device)
    ws = truncation(ws, w_avg, psi)
    if ws_mix is not None:
        mask = torch.from_numpy(inputs.mix_mask).to(device)
        ws = style_mixing(ws, truncation(ws_mix, w_avg, psi), mask)
    return ws


def batch_noise(
    inputs: BatchInputs, const_noise: Sequence[torch.Tensor], device: torch.device | str
) -> list[torch.Tensor] | None:
    """Per-layer noise [N, 1, r, r] for a batch with noise=random or none rows (the const buffers elsewhere), else
    None."""
    if inputs.noise is None:
        return None
    rows = torch.from_numpy(inputs.noise_random).to(device).view(-1, 1, 1, 1)
    return [torch.where(rows, torch.from_numpy(n).to(device), const) for n, const in zip(inputs.noise, const_noise)]


def batch_transform(inputs: BatchInputs, device: torch.device | str, explicit: bool = False) -> torch.Tensor | None:
    """The StyleGAN3 input transforms [N, 3, 3] of a batch; None when no row has one, unless `explicit` (graphs with a
    fixed input list), then identity rows."""
    if inputs.transform is not None:
        return torch.from_numpy(inputs.transform).to(device)
    return torch.eye(3).expand(len(inputs), 3, 3).contiguous().to(device) if explicit else None


def synthesis_args(inputs: BatchInputs, device: torch.device | str) -> dict:
    """Keyword arguments of G.synthesis besides ws and noise: the transform when some row of the batch has one."""
    transform = batch_transform(inputs, device)
    return {} if transform is None else {"transform": transform}


@torch.inference_mode()
def run_eager(G, inputs: BatchInputs, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run a ProgressiveGenerator on one batch -> [N, H, W, C] uint8 on `device`.

    On the CPU each image's bits are independent of the batch and the thread count: dense layers are one product per
    sample (layers.EqualizedLinear) and convolutions always run on oneDNN (layers.conv2d).
    """
    ws = batch_styles(G.mapping, G.w_avg, inputs, device)
    return to_uint8(G.synthesis(ws, batch_noise(inputs, G.const_noise(), device), **synthesis_args(inputs, device)))
