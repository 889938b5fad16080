"""Two ONNX exports of one model side by side: ms per image of each synthesis graph in ONNX Runtime on the CPU, one
thread (as a server worker runs it), the two taking turns call by call, and how many pixels they share.

For a change to the exporter: export with the tree before and after it, then compare.

    git worktree add /tmp/before HEAD~1
    cd /tmp  # from here, so that the working directory does not put this tree before /tmp/before
    PYTHONPATH=/tmp/before python -m ganserve.cli export --model /tmp/before/ganserve/zoo/stylegan-emoji64 --out /tmp/a
    cd - && ganserve export --out /tmp/b
    python benchmarks/onnx_ab.py --a /tmp/a --b /tmp/b [--batch-sizes 1,8,32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from ganserve.inference.ort import OnnxRuntimeBackend


def compare(a: Path, b: Path, batch: int, rounds: int, calls_per_image: int = 64) -> dict:
    """ms per image of each export's synthesis graph on the same random styles (the constant noise), as a CPU server
    worker runs it (OnnxRuntimeBackend, one thread), and their pixel agreement."""
    backends = {"a": OnnxRuntimeBackend(a, "cpu", threads=1), "b": OnnxRuntimeBackend(b, "cpu", threads=1)}
    config = backends["a"].config
    ws = np.random.default_rng(batch).standard_normal((batch, config.num_ws, config.w_dim)).astype(np.float32)
    images = {k: backend.synthesize(ws).astype(int) for k, backend in backends.items()}  # also the warm-up
    diff = np.abs(images["a"] - images["b"])
    calls = max(2, calls_per_image // batch)
    ms = {"a": [], "b": []}
    ratios = []
    for _ in range(rounds):
        took = dict.fromkeys(backends, 0.0)
        for k in ("a", "b", "a", "b"):
            start = time.perf_counter()
            for _ in range(calls):
                backends[k].synthesize(ws)
            took[k] += time.perf_counter() - start
        for k in took:
            ms[k].append(1000 * took[k] / (2 * calls * batch))
        ratios.append(took["a"] / took["b"])
    return {"batch": batch, "a_ms": statistics.median(ms["a"]), "b_ms": statistics.median(ms["b"]),
            "a_over_b": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "equal": float((diff == 0).mean()), "max_diff": int(diff.max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, required=True, help="export folder A (the one before)")
    p.add_argument("--b", type=Path, required=True, help="export folder B")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print("| batch | A ms per image | B ms per image | A / B (rounds) | pixels equal | largest difference |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for batch in (int(x) for x in args.batch_sizes.split(",")):
        r = compare(args.a, args.b, batch, args.rounds)
        print(f"| {batch} | {r['a_ms']:.3f} | {r['b_ms']:.3f} | {r['a_over_b']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
              f"{r['equal']:.5%} | {r['max_diff']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
