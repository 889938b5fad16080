"""Bulk generation against the server: `ganserve generate` of N seeds, the whole command, against what `ganserve serve`
serves to C clients, both with their defaults, taking turns.

Each round times `ganserve generate --seeds 0-(N-1) --outdir TMP --quiet` from start to exit (import, model load,
worker start-up, generation, PNG files), then loads the server (started once, default configuration, idle between
turns) with locust at C users for the same number of seconds. Prints each round and the medians, and bulk / server
images/s.

    python benchmarks/bulk_vs_serve.py [--model NAME_OR_DIR] [--seeds 1024] [--concurrency 32] [--rounds 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import default_model, run_locust  # noqa: E402

from ganserve.serve.process import ServerProcess  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory or bundled name (default: the bundled default model)")
    p.add_argument("--seeds", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of server load per round (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each round's measurement")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    args.model = args.model or default_model()

    bulk, served = [], []
    with tempfile.TemporaryDirectory(prefix="bulk-") as tmp, ServerProcess([args.model], "--log-level",
                                                                          "warning") as server:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "ganserve.cli", "generate", "--model", args.model, "--seeds",
               f"0-{args.seeds - 1}", "--outdir", str(out), "--quiet"]
        subprocess.run(cmd, check=True)  # the first run exports ONNX into the cache if needed: not timed
        for r in range(args.rounds):
            shutil.rmtree(out, ignore_errors=True)
            start = time.monotonic()
            subprocess.run(cmd, check=True)
            bulk.append(args.seeds / (time.monotonic() - start))
            result = run_locust(server.url, args.concurrency, args.warmup, args.duration, Path(tmp), 10**9)
            served.append(result["images_per_s"])
            print(f"round {r + 1}/{args.rounds}: generate {bulk[-1]:.1f} img/s (whole command), "
                  f"serve c={args.concurrency} {served[-1]:.1f} img/s", flush=True)
    b, s = statistics.median(bulk), statistics.median(served)
    print(f"medians: generate {b:.1f} img/s, serve {s:.1f} img/s, generate / serve {b / s:.2f}")


if __name__ == "__main__":
    main()
