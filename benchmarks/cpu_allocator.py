"""Eager PyTorch on the CPU with and without `ganserve.devices.keep_freed_memory`: images/s, kernel time, page faults.

Each measurement is a fresh process with one torch thread (as an inference worker), running the model's batches back
to back; the two settings alternate round by round and the median is kept. Page faults and CPU times come from
getrusage() over the measured window.

    python benchmarks/cpu_allocator.py                 # the bundled model; writes results/cpu_allocator.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from backends import machine  # benchmarks/backends.py, beside this file

RESULTS = Path(__file__).resolve().parent / "results"

# One measurement, in a process of its own: argv = model, batch size, seconds, "keep" or "default".
CHILD = """
import json, resource, sys, time
import torch
from ganserve.devices import keep_freed_memory
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_specs
from ganserve.models.weights import resolve_model
model, batch, seconds, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
kept = keep_freed_memory() if mode == "keep" else False
backend = load_backend(resolve_model(model), "torch", "cpu")
def run(first):
    backend.run(backend.prepare(make_specs(backend.config, list(range(first, first + batch))))).cpu().numpy()
for i in range(3):
    run(i * batch)
before, started, images = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
while time.perf_counter() - started < seconds:
    run(1000 + images)
    images += batch
wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"images_per_s": images / wall, "kept": kept,
                  "user_ms": 1000 * (after.ru_utime - before.ru_utime) / images,
                  "system_ms": 1000 * (after.ru_stime - before.ru_stime) / images,
                  "faults": (after.ru_minflt - before.ru_minflt) / images}))
"""


def measure(model: str, batch: int, seconds: float, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(batch), str(seconds), mode],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="stylegan-emoji64", help="model directory or bundled name")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--out", default=str(RESULTS / "cpu_allocator.md"))
    args = p.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    cells: dict[tuple[int, str], list[dict]] = {}
    for r in range(args.rounds):
        for size in sizes:
            for mode in ("default", "keep") if r % 2 == 0 else ("keep", "default"):
                cells.setdefault((size, mode), []).append(m := measure(args.model, size, args.seconds, mode))
                print(f"round {r + 1}/{args.rounds} batch {size:>3} {mode:>7}: {m['images_per_s']:6.1f} img/s, "
                      f"user {m['user_ms']:.2f} ms, system {m['system_ms']:.2f} ms, {m['faults']:.0f} faults "
                      "per image", flush=True)

    def med(size: int, mode: str, key: str) -> float:
        return statistics.median(c[key] for c in cells[(size, mode)])

    lines = ["# CPU allocator: glibc malloc as it comes vs keep_freed_memory", "",
             f"Command: `python benchmarks/cpu_allocator.py --model {args.model} --batch-sizes {args.batch_sizes} "
             f"--rounds {args.rounds} --seconds {args.seconds:g}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine().items() if k != "torch_threads") + "; one torch "
             f"thread per process; medians of {args.rounds} rounds, the two settings alternating. CPU times and minor "
             "page faults per image from getrusage().", "",
             "| batch | img/s default | img/s kept | ratio | system ms/img default | kept "
             "| faults/img default | kept |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in sizes:
        d, k = med(size, "default", "images_per_s"), med(size, "keep", "images_per_s")
        lines.append(f"| {size} | {d:.1f} | {k:.1f} | {k / d:.2f}x | {med(size, 'default', 'system_ms'):.2f} | "
                     f"{med(size, 'keep', 'system_ms'):.2f} | {med(size, 'default', 'faults'):.0f} | "
                     f"{med(size, 'keep', 'faults'):.0f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
