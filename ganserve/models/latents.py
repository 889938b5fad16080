"""Seeds, latents, truncation and style mixing: the one implementation that the CLI, backends and server call.

Owns seed -> z (NVlabs' RandomState convention), layer-spec parsing, truncation and mixing; the checks of seeds, seed
lists and psi that need no model are in ganserve.schema.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ganserve.errors import SpecError
from ganserve.schema import INT_PATTERN, LAYER_PRESETS, RANGE_PATTERN, check_psi, check_seed

if TYPE_CHECKING:
    import torch

# -- seeds ---------------------------------------------------------------------------------------------------
_rng = threading.local()  # one RandomState per thread, reseeded per seed


def seed_to_z(seed: int, z_dim: int) -> np.ndarray:
    """The latent of a seed: np.random.RandomState(seed).randn(z_dim) as float32 (NVlabs' convention).

    Reseeding a thread's RandomState gives the same numbers as a new one and costs 4 us instead of about 95 (a new
    RandomState allocates its generator and lock): 4% of a CPU worker's time per image on the bundled model.
    """
    state = getattr(_rng, "state", None)
    if state is None:
        state = _rng.state = np.random.RandomState()
    state.seed(check_seed(seed))
    return state.randn(z_dim).astype(np.float32)


def seeds_to_z(seeds: Sequence[int], z_dim: int) -> np.ndarray:
    """[N, z_dim] float32, row i the latent of seeds[i]."""
    if len(seeds) == 0:
        return np.zeros((0, z_dim), np.float32)
    return np.stack([seed_to_z(s, z_dim) for s in seeds])


def noise_for_seed(seed: int, resolutions: Sequence[int]) -> list[np.ndarray]:
    """Per-layer noise maps [1, r, r] for noise=random, drawn from a stream of its own seeded by the request seed."""
    rng = np.random.Generator(np.random.PCG64([check_seed(seed), 0x6E6F6973]))  # "nois": apart from z's stream
    return [rng.standard_normal((1, r, r)).astype(np.float32) for r in resolutions]


# -- psi and truncation ----------------------------------------------------------------------------------------
def truncation_psi_rows(psi: Sequence[float], num_ws: int, cutoff: int | None = None) -> np.ndarray:
    """Per-sample, per-layer psi [N, num_ws]: psi on layers < cutoff (default all), 1 elsewhere."""
    cutoff = num_ws if cutoff is None else cutoff
    if not isinstance(cutoff, int) or isinstance(cutoff, bool) or not 0 <= cutoff <= num_ws:
        raise SpecError(
            f"truncation cutoff must be an integer in [0, {num_ws}], got {cutoff!r}",
            field="truncation_cutoff",
        )
    rows = np.ones((len(psi), num_ws), np.float32)
    rows[:, :cutoff] = np.asarray([check_psi(p) for p in psi], np.float32)[:, None]
    return rows


def truncation(ws: torch.Tensor | np.ndarray, w_avg: torch.Tensor | np.ndarray,
               psi: torch.Tensor | np.ndarray | float) -> torch.Tensor | np.ndarray:
    """w = w_avg + psi * (w - w_avg), exact at psi=0 and psi=1. `psi` is a float or [N, num_ws] per sample/layer.

    torch tensors (torch.lerp) or numpy arrays (ONNX Runtime on the CPU, without torch): the same bits either way.
    """
    if isinstance(ws, np.ndarray):
        psi = np.asarray(psi, np.float32)
        return lerp_like_torch(np.asarray(w_avg, np.float32), ws, psi[..., None] if psi.ndim == 2 else psi)
    import torch

    if not isinstance(psi, torch.Tensor):
        psi = torch.tensor(float(psi))
    elif psi.ndim == 2:
        psi = psi.unsqueeze(-1)
    return torch.lerp(w_avg.to(ws.dtype).expand_as(ws), ws, psi.to(device=ws.device, dtype=ws.dtype))


def lerp_like_torch(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """torch.lerp(start, end, weight) on float32 arrays, bit for bit as torch computes it on the CPU: where
    |weight| < 0.5, start + weight * (end - start), else end + (weight - 1) * (end - start), each a fused
    multiply-add (one rounding). The product of two float32 numbers is exact in float64, so the float64 sum
    rounded to float32 is the fused result, except for ties after the first rounding (about one in 2^29)."""
    start, end, weight = np.broadcast_arrays(start, end, weight)
    small = np.abs(weight) < 0.5
    coeff = np.where(small, weight, weight - np.float32(1)).astype(np.float64)
    base = np.where(small, start, end).astype(np.float64)
    return (coeff * (end - start).astype(np.float64) + base).astype(np.float32)


# -- style mixing ------------------------------------------------------------------------------------------------
def _layer_resolutions(model) -> list[float]:
    """The resolution each ws entry draws: `model` is a resolution (StyleGAN/StyleGAN2: num_ws = 2*log2(res) - 2,
    entry i at 4 * 2**(i // 2)) or a ModelConfig (its own layer_resolutions(), e.g. StyleGAN3's cutoffs)."""
    if isinstance(model, (int, np.integer)):
        return [4.0 * 2 ** (i // 2) for i in range(2 * int(math.log2(model)) - 2)]
    if getattr(model, "arch", None) != "stylegan3":
        return _layer_resolutions(int(model.resolution))
    return [float(r) for r in model.layer_resolutions()]


def layer_presets(resolution) -> dict[str, tuple[int, ...]]:
    """ws indices of the presets: coarse (4-8 px), middle (16-32 px), fine (64 px and up), all.

    `resolution`: the model's resolution, or its ModelConfig (needed for StyleGAN3, whose ws entries are mapped by
    the resolution they draw, twice their cutoff frequency, to the nearest power of two in log scale).
    """
    res_of = _layer_resolutions(resolution)
    log2 = [math.floor(math.log2(r) + 0.5 + 1e-9) for r in res_of]  # nearest power of two; a tie goes up
    return {
        "coarse": tuple(i for i, k in enumerate(log2) if k <= 3),
        "middle": tuple(i for i, k in enumerate(log2) if 4 <= k <= 5),
        "fine": tuple(i for i, k in enumerate(log2) if k >= 6),
        "all": tuple(range(len(res_of))),
    }


def parse_layers(spec: str | Sequence[int], resolution) -> tuple[int, ...]:
    """Style-mixing layers: a preset (coarse/middle/fine/all), an inclusive range "a-b", or a list "0,1,4-5".

    Returns sorted, unique ws indices, each checked against num_ws of a StyleGAN at `resolution` (an int), or of the
    model a ModelConfig describes (which StyleGAN3 needs: its num_ws does not follow from the resolution).
    """
    num_ws = len(_layer_resolutions(resolution))
    presets = layer_presets(resolution)
    if not isinstance(resolution, (int, np.integer)):
        resolution = resolution.resolution
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in presets:
            if not presets[key]:
                raise SpecError(
                    f"mix_layers {key!r} is empty at resolution {resolution} (num_ws={num_ws})",
                    field="mix_layers",
                )
            return presets[key]
        if not key:
            raise SpecError("mix_layers is empty", field="mix_layers")
        out: list[int] = []
        for part in key.split(","):
            if m := RANGE_PATTERN.match(part):
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise SpecError(f"mix_layers range {part.strip()!r} runs backwards", field="mix_layers")
                out.extend(range(a, b + 1))
            elif m := INT_PATTERN.match(part):
                out.append(int(m.group(1)))
            else:
                raise SpecError(
                    f"bad mix_layers {spec!r}: use {'/'.join(LAYER_PRESETS)}, a range 'a-b' or a list '0,1,4-5'",
                    field="mix_layers",
                )
    else:
        out = []
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise SpecError(f"mix_layers entries must be integers, got {v!r}", field="mix_layers")
            out.append(int(v))
        if not out:
            raise SpecError("mix_layers is empty", field="mix_layers")
    bad = [i for i in out if not 0 <= i < num_ws]
    if bad:
        raise SpecError(
            f"mix_layers {bad} out of range: this model has layers 0-{num_ws - 1} (num_ws={num_ws})",
            field="mix_layers",
        )
    return tuple(sorted(set(out)))


def style_mixing(ws: torch.Tensor | np.ndarray, ws_mix: torch.Tensor | np.ndarray,
                 mask: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """ws[:, layers] = ws_mix[:, layers], `mask` [N, num_ws] bool marking each sample's mixed layers (torch tensors
    or numpy arrays)."""
    if isinstance(ws, np.ndarray):
        return np.where(np.asarray(mask)[..., None], ws_mix, ws)
    import torch

    return torch.where(mask.unsqueeze(-1), ws_mix, ws)


# -- StyleGAN3 input transforms -----------------------------------------------------------------------------
def image_transform(rotate: float = 0.0, translate: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The float32 [3, 3] input transform that rotates an image by `rotate` degrees (counter-clockwise) and shifts it
    by `translate` (x, y, in units of the image's width and height), as NVlabs' gen_images.py --rotate/--translate
    set it; exactly the identity for (0, (0, 0))."""
    if rotate == 0 and translate[0] == 0 and translate[1] == 0:
        return np.eye(3, dtype=np.float32)
    return np.linalg.inv(make_transform(translate, rotate)).astype(np.float32)


def make_transform(translate: tuple[float, float], angle: float) -> np.ndarray:
    """NVlabs gen_images.py's make_transform: the 3x3 rotation by `angle` degrees and translation."""
    m = np.eye(3)
    s, c = np.sin(angle / 360.0 * np.pi * 2), np.cos(angle / 360.0 * np.pi * 2)
    m[0][0], m[0][1], m[0][2] = c, s, translate[0]
    m[1][0], m[1][1], m[1][2] = -s, c, translate[1]
    return m


# -- interpolation -----------------------------------------------------------------------------------------------
def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points from a to b in equal straight steps, [steps, *a.shape] float32; the first is a and the last
    b, bit for bit."""
    t = _fractions(steps).reshape(-1, *([1] * a.ndim))
    out = ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)
    out[0], out[-1] = a, b
    return out


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points from a to b along the great circle between them, radius going linearly from |a| to |b| (the
    way latents drawn from a normal distribution are walked); [steps, dim] float32, the ends a and b bit for bit.
    Nearly parallel vectors are walked in a straight line."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 or nb == 0:
        return lerp(a, b, steps)
    cos = float(np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0))
    omega = math.acos(cos)
    if math.sin(omega) < 1e-6:
        return lerp(a, b, steps)
    t = _fractions(steps)[:, None]
    unit = (np.sin((1 - t) * omega) * (a64 / na) + np.sin(t * omega) * (b64 / nb)) / math.sin(omega)
    out = (unit * ((1 - t) * na + t * nb)).astype(np.float32)
    out[0], out[-1] = a, b
    return out


def _fractions(steps: int) -> np.ndarray:
    if steps < 2:
        raise SpecError(f"an interpolation needs at least 2 steps (its two ends), got {steps}", field="steps")
    return np.linspace(0.0, 1.0, steps)


def walk(points: Sequence[np.ndarray], steps: int, space: str, loop: bool = False) -> np.ndarray:
    """Frames through `points` in order (and back to the first with `loop`): `steps` frames from each point to the
    next, the next point itself starting the following leg, so a point appears once; the last point ends an open
    walk, and a loop ends just before the first point (it repeats seamlessly). `space` "z": slerp, "w": lerp."""
    legs = list(zip(points, points[1:])) + ([(points[-1], points[0])] if loop else [])
    step = slerp if space == "z" else lerp
    frames = [step(a, b, steps)[:-1] for a, b in legs]
    if not loop:
        frames.append(points[-1][None])
    return np.concatenate(frames)
