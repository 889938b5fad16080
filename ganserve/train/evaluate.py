"""Scoring a generator against a data set with SWD, always next to the real-vs-real floor.

Owns the choice of the disjoint real halves and the generated set (seeds 0..n-1, the serving path's sampling).
"""

from __future__ import annotations

import numpy as np
import torch

from ganserve.models.generator import ProgressiveGenerator
from ganserve.models.sampling import iter_batches, make_specs, prepare_batch, run_eager
from ganserve.train.swd import DescriptorSet, swd


def evaluate_swd(
    G: ProgressiveGenerator, reals: torch.Tensor, num: int = 10000, batch_size: int = 64, seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """SWD of `num` generated images against `num` real ones, and of a disjoint set of `num` real ones (the floor).

    `reals` is uint8 [N, C, R, R]; `num` is capped at N // 2 so the two real halves never share an image.
    """
    num = min(num, len(reals) // 2)
    if num < 1:
        raise ValueError(f"SWD needs at least 2 real images, got {len(reals)}")
    res = G.config.resolution
    if reals.shape[-1] != res:
        raise ValueError(f"real images are {reals.shape[-1]}x{reals.shape[-1]}, the model makes {res}x{res}")
    perm = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(len(reals)))
    ref, other = DescriptorSet(res, seed), DescriptorSet(res, seed)
    fakes = DescriptorSet(res, seed)
    for i in range(0, num, 1024):
        ref.add(reals[perm[i : min(i + 1024, num)]])
        other.add(reals[perm[num + i : num + min(i + 1024, num)]])
    specs = make_specs(G.config, list(range(num)))
    for batch in iter_batches(specs, batch_size):
        inputs = prepare_batch(batch, G.config, G.noise_resolutions())
        fakes.add(run_eager(G, inputs, device).permute(0, 3, 1, 2).cpu())
    return {"num": num, "fake": swd(fakes, ref, seed), "floor": swd(other, ref, seed)}


def format_report(result: dict) -> str:
    """A small table: one column per pyramid level plus the average."""
    keys = list(result["fake"])
    head = f"{'SWD x1e3 (n=' + str(result['num']) + ')':<24}" + "".join(f"{k:>9}" for k in keys)
    rows = [head]
    for label, name in (("generated vs real", "fake"), ("real vs real (floor)", "floor")):
        rows.append(f"{label:<24}" + "".join(f"{result[name][k]:9.2f}" for k in keys))
    return "\n".join(rows)
