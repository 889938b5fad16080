"""bfloat16 on the CPU: images/s of eager synthesis under CPU autocast (bf16, oneDNN) against float32, and how far
its pixels move, per model and batch size.

The two precisions take turns call by call in each round, one torch thread (as a server worker runs), so that a
noisy shared machine slows both alike; the ratio is taken within each round and the median reported. Pixels: the
fraction of uint8 values equal to float32's, the largest difference and the mean absolute difference, over `--seeds`.

    python benchmarks/cpu_bf16.py --model stylegan-emoji64 --model /tmp/sg256 [--batch-sizes 1,8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import machine  # noqa: E402  (benchmarks/backends.py, beside this file)

from ganserve.imaging import to_uint8  # noqa: E402
from ganserve.inference.sampling import batch_noise, batch_styles, make_specs, prepare_batch  # noqa: E402
from ganserve.models.weights import load_model, resolve_model  # noqa: E402


def synthesize(G, inputs, bf16: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ws = batch_styles(G.mapping, G.w_avg, inputs, "cpu")
        return to_uint8(G.synthesis(ws, batch_noise(inputs, G.const_noise(), "cpu")).float())


def agreement(G, seeds: list[int]) -> dict:
    inputs = prepare_batch(make_specs(G.config, seeds), G.config, G.noise_resolutions())
    a = synthesize(G, inputs, False).numpy().astype(int)
    b = synthesize(G, inputs, True).numpy().astype(int)
    diff = np.abs(a - b)
    return {"equal": float((diff == 0).mean()), "max_diff": int(diff.max()), "mean_abs_diff": float(diff.mean())}


def speed(G, batch: int, rounds: int, calls: int) -> tuple[float, float, float]:
    """(fp32 img/s, bf16 img/s, median bf16/fp32 ratio of the rounds)."""
    inputs = prepare_batch(make_specs(G.config, list(range(batch))), G.config, G.noise_resolutions())
    for bf16 in (False, True, False, True):  # warm-up: oneDNN builds its primitives on the first calls
        synthesize(G, inputs, bf16)
    totals = {False: 0.0, True: 0.0}
    ratios = []
    for _ in range(rounds):
        took = {False: 0.0, True: 0.0}
        for _ in range(calls):
            for bf16 in (False, True):
                t = time.perf_counter()
                synthesize(G, inputs, bf16)
                took[bf16] += time.perf_counter() - t
        ratios.append(took[False] / took[True])
        for k in took:
            totals[k] += took[k]
    n = batch * calls * rounds
    return n / totals[False], n / totals[True], statistics.median(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=4, help="calls per precision per round")
    p.add_argument("--seeds", default="0-63")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    a, b = (int(s) for s in args.seeds.split("-"))
    info = machine()
    bf16_flag = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    print(f"# {info['cpu']}, {info['cores_available']} cores, torch {info['torch']}, {args.threads} thread(s), "
          f"avx512_bf16: {bf16_flag}")
    print("| model | batch | fp32 img/s | bf16 img/s | bf16/fp32 (median of rounds) | uint8 equal | max diff | "
          "mean abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.model:
        G = load_model(resolve_model(name), "cpu")
        agree = agreement(G, list(range(a, b + 1)))
        label = f"{Path(name).name} ({G.config.arch} {G.config.resolution}x{G.config.resolution})"
        for batch in (int(x) for x in args.batch_sizes.split(",")):
            fp32, bf16, ratio = speed(G, batch, args.rounds, args.calls)
            print(f"| {label} | {batch} | {fp32:.1f} | {bf16:.1f} | {ratio:.2f}x | {agree['equal']:.1%} | "
                  f"{agree['max_diff']} | {agree['mean_abs_diff']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
