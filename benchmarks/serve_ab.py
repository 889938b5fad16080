"""Two checkouts of ganserve side by side under the same load: did a change make `ganserve serve` faster?

Starts `ganserve serve` from each source tree (PYTHONPATH=TREE, same model and flags, both running at once but loaded
in turn), then alternates locust runs at one concurrency for a few rounds, and reports per run and as medians:
images/s, p50/p99 latency, the CPU of the inference workers and of the rest of the server (the HTTP process), each
also per image. A change of a few percent is within the noise of one round here; look at the rounds.

    git worktree add /tmp/before HEAD~1
    python benchmarks/serve_ab.py --a /tmp/before --b . --concurrency 32 --rounds 3 -- --max-batch-size 8
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serve_bench as sb  # beside this file

from ganserve.serve.process import ServerProcess

FIELDS = ("images_per_s", "p50_ms", "p99_ms", "worker_cores", "http_cores", "worker_ms_per_image",
          "http_ms_per_image", "locust_cores")


def start(tree: Path, model: str, flags: list[str], log: Path) -> ServerProcess:
    path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONSAFEPATH": "1"}  # SAFEPATH: the working directory must not win
    found = subprocess.run([sys.executable, "-c", "import ganserve; print(ganserve.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree):
        raise SystemExit(f"serve_ab: with PYTHONPATH={tree}, ganserve still comes from {found}")
    server = ServerProcess([model], *flags, log=log, env=env)
    server.start(300)
    sb.warm_up(server)
    return server


def measure(server: ServerProcess, users: int, warmup: float, duration: float, workdir: Path) -> dict:
    pids = server.descendants()
    workers = sb.inference_workers(pids)
    cpu0, worker0, wall0 = sb.cpu_seconds(pids), sb.cpu_seconds(workers), time.monotonic()
    stats = sb.run_locust(server.url, users, warmup, duration, workdir, 10**9)
    elapsed = time.monotonic() - wall0
    worker_cores = (sb.cpu_seconds(workers) - worker0) / elapsed
    http_cores = (sb.cpu_seconds(pids) - cpu0) / elapsed - worker_cores
    rate = stats["images_per_s"] or float("nan")
    return {"images_per_s": rate, "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
            "worker_cores": worker_cores, "http_cores": http_cores,
            "worker_ms_per_image": 1000 * worker_cores / rate, "http_ms_per_image": 1000 * http_cores / rate,
            "locust_cores": stats["locust_cores"] or 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Arguments after -- go to both servers' `ganserve serve`.")
    p.add_argument("--a", required=True, help="source tree A (a checkout of this repository)")
    p.add_argument("--b", required=True, help="source tree B")
    p.add_argument("--model", default=None, help="model directory or bundled name (default: the bundled default)")
    p.add_argument("--workers", type=int, default=2, help="--workers-per-device, with --cpu-threads 1")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=12.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--a-backend", default="torch", help="--backend of server A (default torch)")
    p.add_argument("--b-backend", default="torch", help="--backend of server B (default torch); e.g. --a . --b . "
                   "--b-backend auto compares the default backend with eager torch on one tree")
    p.add_argument("--a-flags", default="", help="more `ganserve serve` flags for server A only, e.g. "
                   "'--max-batch-size 8'")
    p.add_argument("--b-flags", default="", help="more `ganserve serve` flags for server B only")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    model = args.model or sb.default_model()
    flags = ["--workers-per-device", str(args.workers), "--cpu-threads", "1", "--log-level", "warning", *extra]
    backends = {"A": args.a_backend, "B": args.b_backend}
    own_flags = {"A": shlex.split(args.a_flags), "B": shlex.split(args.b_flags)}
    trees = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    say = lambda line: print(line, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="serve-ab-") as tmp:
        servers: dict[str, ServerProcess] = {}
        try:
            for name, tree in trees.items():
                servers[name] = start(tree, model, ["--backend", backends[name], *flags, *own_flags[name]],
                                      Path(tmp) / f"{name}.log")
                say(f"{name}: ganserve serve --backend {backends[name]} {shlex.join(own_flags[name])} from {tree} "
                    f"at {servers[name].url}")
            rows: dict[str, list[dict]] = {name: [] for name in trees}
            for r in range(args.rounds):
                for name in (("A", "B") if r % 2 == 0 else ("B", "A")):  # who goes first alternates
                    workdir = Path(tmp) / f"{name}{r}"
                    workdir.mkdir()
                    row = measure(servers[name], args.concurrency, args.warmup, args.duration, workdir)
                    rows[name].append(row)
                    say(f"round {r + 1}/{args.rounds} {name}: " + "  ".join(f"{k} {row[k]:.3g}" for k in FIELDS))
        finally:
            for server in servers.values():
                server.stop()
                server.kill()
    say(f"medians of {args.rounds} rounds at concurrency {args.concurrency}:")
    say("| | " + " | ".join(FIELDS) + " |")
    say("| --- |" + " ---: |" * len(FIELDS))
    med = {name: {k: statistics.median(r[k] for r in rows[name]) for k in FIELDS} for name in trees}
    for name in trees:
        say(f"| {name} | " + " | ".join(f"{med[name][k]:.3g}" for k in FIELDS) + " |")
    say(f"B / A images/s: {med['B']['images_per_s'] / med['A']['images_per_s']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
