"""Training speed at the final resolution, variants side by side in one process: images/s of `ganserve train`'s
step (discriminator step, generator step, EMA) on the bundled StyleGAN's configuration at 64x64.

    python benchmarks/train_speed.py --steps 12 --rounds 3                 # every variant, taking turns
    python benchmarks/train_speed.py --profile baseline                    # where one step's time goes

Variants take turns round by round, so a busy moment on a shared machine hits all of them; the figure is the median
of the rounds. Reals are random uint8 images (the data does not change the cost of a step).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ganserve.train.config import Phase, TrainConfig  # noqa: E402
from ganserve.train.distributed import DistInfo  # noqa: E402
from ganserve.train.losses import make_loss  # noqa: E402
from ganserve.train.networks import Networks  # noqa: E402
from ganserve.train.run import resolve  # noqa: E402
from ganserve.train.step import TrainStep  # noqa: E402

# The bundled stylegan-emoji64's flags (README: Reproduce the bundled models)
BUNDLED = dict(arch="stylegan", resolution=64, z_dim=128, w_dim=128, fmap_base=768, fmap_max=128, fade_kimg=8,
               stab_kimg=8, final_kimg=200, loss="wgan_gp", style_mixing_prob=0.5, batch_sizes={64: 16}, ema_kimg=1,
               workers=0)
VARIANTS = {  # TrainConfig fields (the defaults: amp and channels_last on)
    "fp32": {"amp": False, "channels_last": False},
    "bf16": {"amp": True, "channels_last": False},
    "channels_last": {"amp": False, "channels_last": True},
    "bf16+channels_last": {"amp": True, "channels_last": True},
    "fmap_base=1536": {"fmap_base": 1536},  # twice the channels at 16-64 (48 at 64x64): a wider network's cost
    # lazy regularisation: the gradient penalty on every 4th step (time a multiple of 4 steps)
    "reg_interval=4": {"reg_interval": 4},
    "fmap_base=1536+reg_interval=4": {"fmap_base": 1536, "reg_interval": 4},
    # StyleGAN2 with the same channels and batch: R1 every 16th step, path length regularisation every 4th (time a
    # multiple of 16 steps)
    "stylegan2": {"arch": "stylegan2", "loss": "logistic", "reg_interval": 16},
}


def make_step(variant: str, data: Path, out: Path, overrides: dict) -> tuple[TrainStep, Phase, torch.Tensor]:
    cfg = TrainConfig(data=str(data), out=str(out), **{**BUNDLED, **overrides, **VARIANTS[variant]})
    run = resolve(cfg)
    device = torch.device("cpu")
    nets = Networks(run, device)
    step = TrainStep(run, nets, make_loss(run.cfg), DistInfo(), device)
    stage = run.model_config.num_stages - 1
    batch = run.schedule.batches[stage]
    phase = Phase(step=1000, nimg=10**6, stage=stage, alpha=1.0, batch=batch)
    reals = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (batch, 3, 64, 64), np.uint8))
    return step, phase, reals


def timed(step: TrainStep, phase: Phase, reals: torch.Tensor, steps: int) -> float:
    started = time.perf_counter()
    for k in range(steps):
        step(phase._replace(step=phase.step + k), reals)
    return steps * phase.batch / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--profile", help="profile this variant's steps instead (torch.profiler, top operators)")
    p.add_argument("--arch", default="stylegan", choices=("stylegan", "progan"), help="of every variant but stylegan2")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="train-speed-"))
    data = tmp / "data"
    data.mkdir()
    Image.new("RGB", (64, 64)).save(data / "0.png")
    overrides = {"batch_sizes": {64: args.batch}, "arch": args.arch}
    if args.arch == "progan":  # the flags of the first bundled ProGAN (the speed table in docs/training.md)
        overrides.update(batch_sizes={64: 32}, style_mixing_prob=0.9, ema_kimg=5)
    names = [args.profile] if args.profile else args.variants.split(",")
    steps = {name: make_step(name, data, tmp / name, overrides) for name in names}
    for step, phase, reals in steps.values():
        timed(step, phase, reals, 2)  # warm-up
    if args.profile:
        step, phase, reals = steps[args.profile]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            timed(step, phase, reals, args.steps)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            rates[name].append(timed(*steps[name], args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()), flush=True)
    base = statistics.median(rates[names[0]])
    print(f"\n{'variant':<22} {'img/s':>7} {'vs ' + names[0]:>14}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<22} {median:7.1f} {median / base:13.2f}x")
    if args.out:
        result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                              "torch": torch.__version__},
                  "config": {**BUNDLED, **overrides}, "steps": args.steps, "rounds": args.rounds,
                  "img_per_s": rates}
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
