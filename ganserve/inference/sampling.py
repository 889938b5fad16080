"""From per-image requests (a seed, or a latent z or w; psi, mixing, noise, class, StyleGAN3 rotate/translate) to
uint8 images, in batches, on any generator backend.

Owns SampleSpec validation against a model (make_spec; the checks that need no model are in ganserve.schema), the
latents a request may give (check_latents), the host-side batch inputs (z, given ws, class labels, z_mix, psi rows,
mix masks, noise, input transforms) and the eager run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ganserve.errors import SpecError, UnsupportedError, UsageError
from ganserve.imaging import to_uint8
from ganserve.models.config import ModelConfig
from ganserve.models.latents import (
    image_transform,
    noise_for_seed,
    parse_layers,
    seeds_to_z,
    style_mixing,
    truncation,
    truncation_psi_rows,
)
from ganserve.schema import (
    DEFAULT_MIX_LAYERS,
    LATENT_MAX,
    check_noise,
    check_psi,
    check_rotate,
    check_seed,
    check_translate,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SampleSpec:
    """One image: everything that determines its pixels besides the model.

    Its latent is the seed's z, or `z` when given (mapping, truncation and mixing apply as for a seed's), or `w`
    when given: [num_ws, w_dim], the ws the synthesis network receives, used as given (no truncation, mixing or
    class). A spec with z or w has no seed (None), and its noise is const or none (random noise is drawn from the
    seed). The arrays are read-only and take no part in comparisons.
    """

    seed: int | None
    psi: float = 1.0
    mix_seed: int | None = None
    mix_layers: tuple[int, ...] = ()
    noise: str = "const"
    truncation_cutoff: int | None = None
    class_idx: int | None = None  # the class label of a class-conditional model (c_dim > 0), else None
    rotate: float = 0.0  # StyleGAN3: degrees counter-clockwise
    translate: tuple[float, float] = (0.0, 0.0)  # StyleGAN3: (x, y) in units of the image
    z: np.ndarray | None = field(default=None, compare=False, repr=False)  # [z_dim] float32 in place of the seed's
    w: np.ndarray | None = field(default=None, compare=False, repr=False)  # [num_ws, w_dim] float32, used as given

    @property
    def transformed(self) -> bool:
        return self.rotate != 0 or self.translate != (0.0, 0.0)

    @property
    def label(self) -> str:
        """How the image is named: "seed 42", "z", "w"."""
        return f"seed {self.seed}" if self.seed is not None else "w" if self.w is not None else "z"


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
    z: np.ndarray | None = None,
    w: np.ndarray | None = None,
) -> SampleSpec:
    """Validate one image's parameters (ganserve.schema.SPEC_PARAMS) against a model; raises SpecError naming the
    field, UnsupportedError for style mixing on a model without a w space. The one check of a request against its
    model: the CLI, the library and the server (ganserve.serve.params.make_job) all come here.

    `z` or `w` (one row of check_latents' output) replace the seed, which is then None. With `w` the styles are used
    as given: psi, truncation_cutoff, mixing and class are refused (truncate and mix before, e.g. with /latents).
    """
    if z is not None or w is not None:
        z, w = _latent_row(config, z, w)
        if seed is not None:
            raise SpecError("give a seed or a latent, not both", field="seed")
        if noise == "random":
            raise SpecError("noise=random draws its noise from the seed; with z or w use noise const or none",
                            field="noise")
        if w is not None:
            given = {"psi": psi not in (None, 1.0), "truncation_cutoff": truncation_cutoff is not None,
                     "mix_seed": mix_seed is not None, "mix_layers": mix_layers is not None,
                     "class": class_idx is not None}
            bad = [k for k, v in given.items() if v]
            if bad:
                raise SpecError(f"{bad[0]} does not apply to w, which is used as given (truncate and mix when you "
                                "take the ws: GET /latents and `ganserve latents` apply them)", field=bad[0])
            spec = make_spec(config, 0, noise=noise, rotate=rotate, translate=translate,
                             class_idx=0 if config.c_dim else None)
            return dataclasses.replace(spec, seed=None, class_idx=None, w=w)
        spec = make_spec(config, 0, psi, mix_seed, mix_layers, noise, truncation_cutoff, class_idx, rotate, translate)
        return dataclasses.replace(spec, seed=None, z=z)
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


def make_latent_specs(config: ModelConfig, z: object = None, w: object = None, max_count: int | None = None,
                      **params) -> list[SampleSpec]:
    """The same parameters for many latents: `z` [N, z_dim] or `w` [N, num_ws, w_dim] / [N, w_dim] (see
    check_latents), validated once."""
    z, w = check_latents(config, z, w, max_count)
    rows = z if z is not None else w
    first = make_spec(config, None, z=None if z is None else z[0], w=None if w is None else w[0], **params)
    key = "z" if z is not None else "w"
    return [first] + [dataclasses.replace(first, **{key: _read_only(r)}) for r in rows[1:]]


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, np.float32)
    a.flags.writeable = False
    return a


def check_latents(config: ModelConfig, z: object = None, w: object = None,
                  max_count: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The latents of a request as float32 arrays: exactly one of `z` (a list of z vectors, [N, z_dim]) and `w`
    (a list of per-layer ws [N, num_ws, w_dim], or of single w vectors [N, w_dim], each broadcast to every layer).
    SpecError naming the field for a wrong shape, a non-finite number, none or more than `max_count` of them;
    UnsupportedError for w on a model without a w space (ProGAN: its generator takes z only)."""
    if (z is None) == (w is None):
        raise SpecError("give exactly one of z and w", field="z" if z is None else "w")
    name = "z" if z is not None else "w"
    if name == "w" and not config.supports_mixing:
        raise UnsupportedError(f"w needs a StyleGAN model; this one is {config.arch}, which has no w space: give z",
                               field="w")
    given = z if z is not None else w
    if name == "z":
        want = f"[N, {config.z_dim}] (N vectors of z_dim={config.z_dim})"
        one = (config.z_dim,)
    else:
        want = (f"[N, {config.num_ws}, {config.w_dim}] (num_ws x w_dim per image) or [N, {config.w_dim}] (one w "
                "per image, used for every layer)")
        one = (config.num_ws, config.w_dim)
    if isinstance(given, np.ndarray) and given.ndim == 1:  # one z, or one w for every layer
        given = given[None]
    rows = []
    for i, item in enumerate(given if isinstance(given, (list, tuple, np.ndarray)) else [given]):
        try:
            row = np.asarray(item, dtype=np.float64)
        except (TypeError, ValueError):
            raise SpecError(f"{name}[{i}] is not a list of numbers; {name} must have the shape {want}",
                            field=name) from None
        if name == "w" and row.shape == (config.w_dim,):
            row = np.repeat(row[None], config.num_ws, axis=0)
        if row.shape != one:
            raise SpecError(f"{name}[{i}] has the shape {list(row.shape)}; {name} must have the shape {want}",
                            field=name)
        rows.append(row)
    if not rows:
        raise SpecError(f"{name} is empty: it must have the shape {want}", field=name)
    a = np.stack(rows)
    if max_count is not None and a.shape[0] > max_count:
        raise SpecError(f"too many latents: {a.shape[0]}, at most {max_count} per request", field=name)
    if not np.isfinite(a).all() or np.abs(a).max() > LATENT_MAX:
        raise SpecError(f"{name} must hold finite numbers of magnitude at most {LATENT_MAX:g}", field=name)
    a = a.astype(np.float32)
    return (a, None) if name == "z" else (None, a)


def _latent_row(config: ModelConfig, z: object, w: object) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One latent, checked as check_latents checks a list of them."""
    z, w = check_latents(config, None if z is None else [z], None if w is None else [w])
    return (None, _read_only(w[0])) if z is None else (_read_only(z[0]), None)


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
    w: np.ndarray | None = None  # [N, num_ws, w_dim] float32 ws given as they are, only when some row has one
    w_given: np.ndarray | None = None  # [N] bool: rows whose ws are `w` (the others are mapped from z)

    def __len__(self) -> int:
        return len(self.z)


def prepare_batch(specs: Sequence[SampleSpec], config: ModelConfig, noise_resolutions: Sequence[int]) -> BatchInputs:
    n, num_ws = len(specs), config.num_ws
    psi = np.ones((n, num_ws), np.float32)
    for i, s in enumerate(specs):
        psi[i] = truncation_psi_rows([s.psi], num_ws, s.truncation_cutoff)[0]
    z = np.zeros((n, config.z_dim), np.float32)  # rows with a w stay zero: their mapping output is not used
    for i, s in enumerate(specs):
        if s.w is None:
            z[i] = s.z if s.z is not None else seeds_to_z([s.seed], config.z_dim)[0]
    inputs = BatchInputs(z=z, psi=psi)
    if any(s.w is not None for s in specs):
        inputs.w_given = np.array([s.w is not None for s in specs])
        inputs.w = np.zeros((n, config.num_ws, config.w_dim), np.float32)
        for i, s in enumerate(specs):
            if s.w is not None:
                inputs.w[i] = s.w
    if config.c_dim:
        inputs.c = np.zeros((n, config.c_dim), np.float32)
        mapped = [i for i, s in enumerate(specs) if s.w is None]
        inputs.c[mapped, [check_class(specs[i].class_idx, config.c_dim) for i in mapped]] = 1
    if any(s.mix_seed is not None for s in specs):
        inputs.z_mix = np.stack([z[i] if s.mix_seed is None else seeds_to_z([s.mix_seed], config.z_dim)[0]
                                 for i, s in enumerate(specs)])
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


def _array_ops(device: torch.device | str | None):
    """(to, cat, where) for a batch's arrays: torch tensors on `device`, or numpy arrays as they are when device is
    None (ONNX Runtime on the CPU runs without torch; the results have the same bits)."""
    if device is None:
        return (lambda a: a), np.concatenate, np.where
    import torch

    return (lambda a: torch.from_numpy(a).to(device)), torch.cat, torch.where


def batch_styles(mapping, w_avg: torch.Tensor | np.ndarray, inputs: BatchInputs,
                 device: torch.device | str | None) -> torch.Tensor | np.ndarray:
    """ws [N, num_ws, w_dim] for one batch: `mapping` (z -> ws, or (z, c) -> ws for a class-conditional model; any
    backend), then truncation and style_mixing. The mix seed's ws are mapped with the row's own class. Rows given a
    w take it as it is (a batch of only those runs no mapping). Torch tensors on `device`, or with device None numpy
    arrays throughout (`mapping` and `w_avg` numpy too)."""
    to, cat, where = _array_ops(device)
    given = None if inputs.w is None else to(inputs.w)
    if given is not None and inputs.w_given.all():
        return given
    z = to(inputs.z)
    c = None if inputs.c is None else to(inputs.c)
    if inputs.z_mix is not None:
        z = cat([z, to(inputs.z_mix)])
        c = None if c is None else cat([c, c])
    ws = mapping(z) if c is None else mapping(z, c)
    ws, ws_mix = (ws[: len(inputs)], ws[len(inputs) :]) if inputs.z_mix is not None else (ws, None)
    psi = to(inputs.psi)
    ws = truncation(ws, w_avg, psi)
    if ws_mix is not None:
        ws = style_mixing(ws, truncation(ws_mix, w_avg, psi), to(inputs.mix_mask))
    if given is not None:
        ws = where(to(inputs.w_given).reshape(-1, 1, 1), given if device is None else given.to(ws.dtype), ws)
    return ws


def batch_noise(
    inputs: BatchInputs, const_noise: Sequence[torch.Tensor | np.ndarray], device: torch.device | str | None
) -> list[torch.Tensor | np.ndarray] | None:
    """Per-layer noise [N, 1, r, r] for a batch with noise=random or none rows (the const buffers elsewhere), else
    None. Numpy arrays with device None."""
    if inputs.noise is None:
        return None
    to, _, where = _array_ops(device)
    rows = to(inputs.noise_random).reshape(-1, 1, 1, 1)
    return [where(rows, to(n), const) for n, const in zip(inputs.noise, const_noise)]


def batch_transform(inputs: BatchInputs, device: torch.device | str | None,
                    explicit: bool = False) -> torch.Tensor | np.ndarray | None:
    """The StyleGAN3 input transforms [N, 3, 3] of a batch; None when no row has one, unless `explicit` (graphs with a
    fixed input list), then identity rows. Numpy arrays with device None."""
    to = _array_ops(device)[0]
    if inputs.transform is not None:
        return to(inputs.transform)
    return to(np.tile(np.eye(3, dtype=np.float32), (len(inputs), 1, 1))) if explicit else None


def synthesis_args(inputs: BatchInputs, device: torch.device | str) -> dict:
    """Keyword arguments of G.synthesis besides ws and noise: the transform when some row of the batch has one."""
    transform = batch_transform(inputs, device)
    return {} if transform is None else {"transform": transform}


def run_eager(G, inputs: BatchInputs, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run a ProgressiveGenerator on one batch -> [N, H, W, C] uint8 on `device`.

    On the CPU each image's bits are independent of the batch and the thread count: dense layers are one product per
    sample (layers.EqualizedLinear) and convolutions always run on oneDNN (layers.conv2d).
    """
    import torch

    with torch.inference_mode():
        ws = batch_styles(G.mapping, G.w_avg, inputs, device)
        noise = batch_noise(inputs, G.const_noise(), device)
        return to_uint8(G.synthesis(ws, noise, **synthesis_args(inputs, device)))
