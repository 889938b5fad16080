"""Scoring a generator against a data set with SWD, always next to the real-vs-real floor.

Owns the choice of the disjoint real halves and the generated set (seeds 0..n-1, the serving path's sampling; for a
class-conditional model, classes drawn uniformly from a seeded generator or one chosen class), and scoring a training
run's checkpoints at the schedule position each was written at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganserve.errors import UsageError
from ganserve.imaging import to_uint8
from ganserve.inference.sampling import (
    BatchInputs,
    SampleSpec,
    batch_noise,
    batch_styles,
    iter_batches,
    make_spec,
    make_specs,
    prepare_batch,
    run_eager,
)
from ganserve.models import build_generator
from ganserve.models.config import ModelConfig, stage_resolution
from ganserve.models.generator import ProgressiveGenerator
from ganserve.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from ganserve.train.swd import DescriptorSet, swd


def eval_specs(config: ModelConfig, num: int, seed: int = 0, class_idx: int | None = None) -> list[SampleSpec]:
    """The generated set: seeds 0..num-1 at psi 1. A class-conditional model's image i gets `class_idx` when given,
    else a class drawn uniformly from [0, c_dim) by a generator seeded with `seed` (its i-th draw, so a smaller `num`
    keeps the first images' classes). SpecError (field "class") for a class out of range, or for any class given to
    an unconditional model."""
    if config.c_dim and class_idx is None:
        classes = np.random.Generator(np.random.PCG64(seed)).integers(0, config.c_dim, num)
        return [make_spec(config, i, class_idx=int(k)) for i, k in enumerate(classes)]
    return make_specs(config, list(range(num)), class_idx=class_idx)


def class_summary(specs: list[SampleSpec], c_dim: int, class_idx: int | None, seed: int) -> dict | None:
    """Which classes a generated set used, for the report: None for an unconditional model."""
    if not c_dim:
        return None
    counts = np.bincount([s.class_idx for s in specs], minlength=c_dim).tolist()
    if class_idx is not None:
        return {"class": class_idx, "counts": counts}
    return {"sampled": "uniform", "seed": seed, "counts": counts}


class RealReference:
    """The real side of an SWD evaluation: `num` real images' descriptors and the floor (a disjoint `num` real
    images against them). Built once, it scores any number of generators (e.g. every checkpoint of a run)."""

    def __init__(self, reals: torch.Tensor, num: int = 10000, seed: int = 0):
        num = min(num, len(reals) // 2)
        if num < 1:
            raise UsageError(f"SWD needs at least 2 real images, got {len(reals)}")
        self.num, self.seed, self.resolution = num, seed, reals.shape[-1]
        perm = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(len(reals)))
        self.ref, other = DescriptorSet(self.resolution, seed), DescriptorSet(self.resolution, seed)
        for i in range(0, num, 1024):
            self.ref.add(reals[perm[i : min(i + 1024, num)]])
            other.add(reals[perm[num + i : num + min(i + 1024, num)]])
        self.floor = swd(other, self.ref, seed)

    def score(self, G: ProgressiveGenerator, batch_size: int = 64, device: torch.device | str = "cpu",
              stage: int | None = None, alpha: float = 1.0, class_idx: int | None = None) -> dict:
        """{"num", "fake": SWD of G's images (seeds 0..num-1) per level and "avg", "floor": the same for reals}, and
        for a class-conditional model "classes": which were used (see eval_specs and class_summary)."""
        res = G.config.resolution
        if self.resolution != res:
            raise UsageError(f"real images are {self.resolution}x{self.resolution}, the model makes {res}x{res}")
        fakes = DescriptorSet(res, self.seed)
        specs = eval_specs(G.config, self.num, self.seed, class_idx)
        for batch in iter_batches(specs, batch_size):
            inputs = prepare_batch(batch, G.config, G.noise_resolutions())
            fakes.add(_generate(G, inputs, device, stage, alpha).permute(0, 3, 1, 2).cpu())
        result = {"num": self.num, "fake": swd(fakes, self.ref, self.seed), "floor": dict(self.floor)}
        classes = class_summary(specs, G.config.c_dim, class_idx, self.seed)
        if classes is not None:
            result["classes"] = classes
        return result


def evaluate_swd(
    G: ProgressiveGenerator, reals: torch.Tensor, num: int = 10000, batch_size: int = 64, seed: int = 0,
    device: torch.device | str = "cpu", stage: int | None = None, alpha: float = 1.0, class_idx: int | None = None,
) -> dict:
    """SWD of `num` generated images against `num` real ones, and of a disjoint set of `num` real ones (the floor).

    `reals` is uint8 [N, C, R, R]; `num` is capped at N // 2 so the two real halves never share an image.
    `stage`/`alpha` score a network still growing: its images are upsampled (nearest) to the full resolution.
    A class-conditional model's images get `class_idx`, or classes drawn uniformly (seeded by `seed`) without it.
    """
    res = G.config.resolution
    if reals.shape[-1] != res:
        raise UsageError(f"real images are {reals.shape[-1]}x{reals.shape[-1]}, the model makes {res}x{res}")
    return RealReference(reals, num, seed).score(G, batch_size, device, stage, alpha, class_idx)


@torch.inference_mode()
def _generate(G: ProgressiveGenerator, inputs: BatchInputs, device, stage: int | None, alpha: float) -> torch.Tensor:
    if stage is None or (stage == G.last_stage and alpha >= 1.0):
        return run_eager(G, inputs, device)
    ws = batch_styles(G.mapping, G.w_avg, inputs, device)
    img = G.synthesis(ws, batch_noise(inputs, G.const_noise(), device), stage=stage, alpha=alpha)
    return to_uint8(F.interpolate(img.float(), size=G.config.resolution, mode="nearest"))


def checkpoint_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[ProgressiveGenerator, dict]:
    """A training checkpoint's EMA generator and where in the schedule it was written: {nimg, step, stage, alpha}."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a ganserve training checkpoint")
    G = build_generator(ModelConfig.from_dict(json.loads(ckpt["model_config"])))
    G.load_state_dict(ckpt["G_ema"])
    G.eval().requires_grad_(False).to(device)
    return G, {k: ckpt[k] for k in ("nimg", "step", "stage", "alpha")}


def format_report(result: dict) -> str:
    """A small table: one column per pyramid level plus the average."""
    keys = list(result["fake"])
    head = f"{'SWD x1e3 (n=' + str(result['num']) + ')':<24}" + "".join(f"{k:>9}" for k in keys)
    rows = [head]
    for label, name in (("generated vs real", "fake"), ("real vs real (floor)", "floor")):
        rows.append(f"{label:<24}" + "".join(f"{result[name][k]:9.2f}" for k in keys))
    if "classes" in result:
        rows.append(format_classes(result["classes"]))
    return "\n".join(rows)


def format_classes(classes: dict) -> str:
    """One line naming the classes of the generated images and how many of each."""
    counts = classes["counts"]
    if "class" in classes:
        return f"classes: only class {classes['class']} ({sum(counts)} images)"
    per_class = ", ".join(f"{k}: {n}" for k, n in enumerate(counts) if n)
    return f"classes: drawn uniformly from 0-{len(counts) - 1} (seed {classes['seed']}); images per class {per_class}"


def format_checkpoint_row(position: dict, result: dict, resolution: int) -> str:
    """One line per checkpoint: kimg, the resolution it had grown to, alpha, SWD average and floor."""
    res = stage_resolution(position["stage"])
    grown = f"{res}x{res}" + (f" (of {resolution})" if res != resolution else "")
    return (f"kimg {position['nimg'] / 1000:8.1f}  {grown:<16} alpha {position['alpha']:.2f}  "
            f"SWD x1e3 {result['fake']['avg']:8.2f}  floor {result['floor']['avg']:6.2f}")
