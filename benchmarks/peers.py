"""`ganserve serve` against the same generator behind plain LitServe and Ray Serve batching, under the same load.

Every server runs the same model, backend, inference processes (one torch thread each), PNG encoder and max batch.
The peers are what their documentation shows:
- litserve: a LitAPI whose decode_request reads {"seed": N} from a POST, predict runs the batch, encode_response
  returns the PNG;
- ray: a Ray Serve deployment of `--workers` replicas (one CPU each) whose `@serve.batch` method runs the batch and
  encodes the PNGs, behind Ray's HTTP proxy; max_ongoing_requests is raised to twice the max batch so that batches can
  fill (Ray's default of 5 would cap them). Ray runs in the interpreter `--ray-python` names (an environment of its
  own, since Ray pins its own web stack), which must also import ganserve.
A closed-loop load (C clients, each sending its next request when the previous answer is in, random seeds) runs
against each server in turn, the order rotating every round. Every server stays up throughout, and while one is
measured the others are frozen (SIGSTOP of their process groups, SIGCONT after): idle, a LitServe server polls its
queues with about 0.3 of a core, which would otherwise be taken from the server being measured.
Reports images/s and p50/p99 per server and concurrency, and ganserve / peer from the medians.

    python benchmarks/peers.py [--peers litserve,ray] [--ray-python PATH] [--model NAME_OR_DIR] [--backend torch]
        [--workers 2] [--max-batch-size 32] [--concurrency 1,8,32] [--duration 10] [--rounds 2] [--csv FILE]
    python benchmarks/peers.py --plot PNG --from FILE[,FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import litserve as ls
from fastapi import Response
from serve_bench import cpu_seconds, default_model

from ganserve.serve.process import free_port, process_tree

PNG = b"\x89PNG\r\n\x1a\n"


class PeerAPI(ls.LitAPI):
    """The peer: a plain LitAPI with batching, as the LitServe documentation shows one."""

    def __init__(self, model: str, backend: str, **options):
        super().__init__(**options)
        self.model, self.backend_name = model, backend

    def setup(self, device):
        from ganserve.devices import setup_cpu_inference
        from ganserve.inference import load_backend

        setup_cpu_inference(1)
        self.backend = load_backend(self.model, self.backend_name, "cpu")

    def decode_request(self, request):
        from ganserve.inference.sampling import make_spec

        return make_spec(self.backend.config, int(request["seed"]))

    def predict(self, specs):
        return list(self.backend.generate(specs))

    def encode_response(self, pixels):
        from ganserve.imaging import encode_png

        return Response(content=encode_png(pixels), media_type="image/png")


def serve_peer(model: str, backend: str, workers: int, max_batch: int, port: int) -> None:
    api = PeerAPI(model, backend, max_batch_size=max_batch, batch_timeout=0.005)
    ls.LitServer(api, accelerator="cpu", workers_per_device=workers).run(port=port, generate_client_file=False,
                                                                        log_level="warning")


def serve_ray(model: str, backend: str, workers: int, max_batch: int, port: int) -> None:
    """The Ray Serve peer, run until SIGTERM: `workers` replicas of one CPU, `@serve.batch` over POSTed seeds."""
    import ray
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=workers, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2 * max_batch)
    class PeerDeployment:
        def __init__(self):
            from ganserve.devices import setup_cpu_inference
            from ganserve.inference import load_backend

            setup_cpu_inference(1)
            self.backend = load_backend(model, backend, "cpu")

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=0.005)
        async def predict(self, seeds: list[int]) -> list[bytes]:
            from ganserve.imaging import encode_png
            from ganserve.inference.sampling import make_spec

            specs = [make_spec(self.backend.config, seed) for seed in seeds]
            return [encode_png(pixels) for pixels in self.backend.generate(specs)]

        async def __call__(self, request: Request):
            from starlette.responses import Response

            body = await request.json()
            return Response(await self.predict(int(body["seed"])), media_type="image/png")

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(PeerDeployment.bind(), route_prefix="/predict")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


def wait_ready(name: str, probe, proc: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    """Wait until probe() answers 200: a server's health, or one image for Ray (its proxy is up before its replicas)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"peers: {name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if probe().status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"peers: {name} was not ready after {seconds:.0f} s:\n{log.read_text()[-3000:]}")


async def load(request, clients: int, warmup: float, duration: float) -> dict:
    """Closed-loop load: `clients` tasks, each awaiting request(client, seed) in turn; counts after the warm-up."""
    latencies: list[float] = []
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration

    async def user(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            t = time.monotonic()
            body = await request(client, random.randrange(2**32))
            if not body.startswith(PNG):
                raise SystemExit("peers: an answer was not a PNG")
            if t >= measure_from and time.monotonic() <= end:
                latencies.append(time.monotonic() - t)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(user(client) for _ in range(clients)))
    latencies.sort()
    q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1000  # noqa: E731
    return {"images_per_s": len(latencies) / duration, "p50_ms": q(0.5), "p99_ms": q(0.99)}


NAMES = {"ganserve": "ganserve", "litserve": "LitServe LitAPI", "ray": "Ray Serve"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", default="litserve", help="comma-separated: litserve, ray (default litserve)")
    p.add_argument("--ray-python", default=sys.executable,
                   help="the Python of an environment with ray[serve] and ganserve (default: this one)")
    p.add_argument("--model", help="model directory or bundled name (default: the bundled default model)")
    p.add_argument("--backend", default="torch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle-seconds", type=float, default=10.0, help="how long each server's idle CPU use is measured")
    p.add_argument("--csv", type=Path, help="also write the medians here (server, clients, images/s, p50, p99)")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="plot images/s and p99 against clients from the --csv files given as --from and exit")
    p.add_argument("--from", dest="sources", default="", help="with --plot: comma-separated CSV files, a row each")
    p.add_argument("--serve-peer", type=int, help=argparse.SUPPRESS)  # internal: run the LitServe peer on this port
    p.add_argument("--serve-ray", type=int, help=argparse.SUPPRESS)  # internal: run the Ray Serve peer on this port
    args = p.parse_args()
    if args.serve_peer:
        serve_peer(args.model, args.backend, args.workers, args.max_batch_size, args.serve_peer)
        return
    if args.serve_ray:
        serve_ray(args.model, args.backend, args.workers, args.max_batch_size, args.serve_ray)
        return
    if args.plot:
        plot([Path(f) for f in args.sources.split(",") if f], args.plot)
        return
    args.model = args.model or default_model()
    peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    if unknown := [name for name in peers if name not in NAMES or name == "ganserve"]:
        p.error(f"--peers: unknown {', '.join(unknown)} (choose from litserve, ray)")
    if "ray" in peers and not _imports(args.ray_python, "ray.serve, ganserve"):
        p.error(f"--peers ray: {args.ray_python} cannot import ray.serve and ganserve; give --ray-python the Python of "
                "an environment with both (e.g. python -m venv --system-site-packages ENV && ENV/bin/pip install "
                "'ray[serve]')")

    names = ["ganserve", *peers]
    ports = {name: free_port() for name in names}
    common = ["--model", args.model, "--backend", args.backend, "--workers", str(args.workers), "--max-batch-size",
              str(args.max_batch_size)]
    def command(name: str) -> list[str]:
        port = str(ports[name])
        if name == "ganserve":
            return [sys.executable, "-m", "ganserve.cli", "serve", args.model, "--backend", args.backend, "--device",
                    "cpu", "--workers-per-device", str(args.workers), "--cpu-threads", "1", "--max-batch-size",
                    str(args.max_batch_size), "--port", port, "--log-level", "warning"]
        if name == "litserve":
            return [sys.executable, __file__, *common, "--serve-peer", port]
        return [args.ray_python, __file__, *common, "--serve-ray", port]

    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    requests = {
        "ganserve": lambda c, s: _get(c, f"{urls['ganserve']}/generate?seed={s}"),
        "litserve": lambda c, s: _post(c, f"{urls['litserve']}/predict", {"seed": s}),
        "ray": lambda c, s: _post(c, f"{urls['ray']}/predict", {"seed": s}),
    }
    probes = {
        "ganserve": lambda: httpx.get(urls["ganserve"] + "/health", timeout=2),
        "litserve": lambda: httpx.get(urls["litserve"] + "/health", timeout=2),
        "ray": lambda: httpx.post(urls["ray"] + "/predict", json={"seed": 0}, timeout=30),
    }
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        logs = {name: open(Path(tmp) / f"{name}.log", "w") for name in names}
        procs = {name: subprocess.Popen(command(name), stdout=logs[name], stderr=subprocess.STDOUT,
                                        start_new_session=True) for name in names}
        try:
            for name in names:
                wait_ready(name, probes[name], procs[name], Path(tmp) / f"{name}.log")
            # What each server costs the machine while it waits. An idle server's background work (polling,
            # heartbeats) would slow whichever server is being measured, so during each turn every other server's
            # process group is stopped (SIGSTOP) and continued after it; the warm-up that starts each turn absorbs
            # the thaw.
            trees = {name: process_tree(proc.pid) for name, proc in procs.items()}
            before = {name: cpu_seconds(pids) for name, pids in trees.items()}
            time.sleep(args.idle_seconds)
            idle = {name: (cpu_seconds(trees[name]) - before[name]) / args.idle_seconds for name in names}
            print("# idle CPU use, cores: " + ", ".join(f"{NAMES[n]} {idle[n]:.3f}" for n in names), flush=True)
            print(f"# {args.model}, backend {args.backend}, {args.workers} processes x 1 thread, max batch "
                  f"{args.max_batch_size}; {args.rounds} rounds of {args.duration:g} s", flush=True)
            header = ["clients"] + [f"{NAMES[n]} img/s | p50 / p99 ms" for n in names] + \
                     [f"ganserve / {NAMES[n]}" for n in peers]
            print("| " + " | ".join(header) + " |")
            print("|" + " ---: |" * (1 + 2 * len(names) + len(peers)), flush=True)
            table: list[dict] = []
            for clients in (int(c) for c in args.concurrency.split(",")):
                rows: dict[str, list[dict]] = {name: [] for name in names}
                for r in range(args.rounds):
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        others = [procs[n].pid for n in names if n != name]
                        for pid in others:  # the others are frozen (SIGSTOP) while one is measured, see above
                            _signal_group(pid, signal.SIGSTOP)
                        try:
                            rows[name].append(asyncio.run(load(requests[name], clients, args.warmup, args.duration)))
                        finally:
                            for pid in others:
                                _signal_group(pid, signal.SIGCONT)
                med = {name: {k: statistics.median(row[k] for row in rows[name]) for k in rows[name][0]}
                       for name in rows}
                cells = [str(clients)]
                cells += [f"{med[n]['images_per_s']:.0f} | {med[n]['p50_ms']:.0f} / {med[n]['p99_ms']:.0f}"
                          for n in names]
                cells += [f"{med['ganserve']['images_per_s'] / med[n]['images_per_s']:.2f}" for n in peers]
                print("| " + " | ".join(cells) + " |", flush=True)
                table += [{"server": n, "clients": clients, **med[n], "backend": args.backend,
                           "max_batch": args.max_batch_size, "model": Path(args.model).name} for n in names]
            if args.csv:
                with open(args.csv, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(table[0]))
                    writer.writeheader()
                    writer.writerows(table)
        finally:
            for proc in procs.values():  # the whole group: LitServe's workers outlive a SIGTERM to its main process
                _signal_group(proc.pid, signal.SIGCONT)
                _signal_group(proc.pid, signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
            for name in names:
                logs[name].close()
                if procs[name].returncode not in (0, -15):
                    tail = (Path(tmp) / f"{name}.log").read_text()[-3000:]
                    print(f"# {name} log (exit {procs[name].returncode}):\n{tail}")


def _signal_group(pid: int, sig: int) -> None:
    """Signal a server's process group; one already gone (a server that failed to start) is not an error, so that
    the cleanup does not hide the failure."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _imports(python: str, modules: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {modules}"], capture_output=True).returncode == 0
    except OSError:  # no such interpreter
        return False


def plot(sources: list[Path], path: Path) -> None:
    """images/s and p99 latency against clients, one row of two panels per CSV (e.g. one per backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sources), 2, figsize=(11, 3.8 * len(sources)), squeeze=False)
    for (ax1, ax2), source in zip(axes, sources, strict=True):
        with open(source) as f:
            rows = list(csv.DictReader(f))
        levels = sorted({int(r["clients"]) for r in rows})
        for name in dict.fromkeys(r["server"] for r in rows):
            pts = sorted((int(r["clients"]), float(r["images_per_s"]), float(r["p99_ms"]))
                         for r in rows if r["server"] == name)
            ax1.plot([q[0] for q in pts], [q[1] for q in pts], marker="o", label=NAMES.get(name, name))
            ax2.plot([q[0] for q in pts], [q[2] for q in pts], marker="o", label=NAMES.get(name, name))
        for ax, ylabel in ((ax1, "images / s"), (ax2, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(x) for x in levels])
            ax.set_xlabel("clients (requests in flight)")
            ax.set_ylabel(ylabel)
            batch = f", max batch {rows[0]['max_batch']}" if rows[0].get("max_batch") else ""
            model = f"{rows[0]['model']}, " if rows[0].get("model") else ""
            ax.set_title(f"{model}backend {rows[0]['backend']}{batch}", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax1.set_ylim(bottom=0)
        ax2.set_yscale("log")
    fig.suptitle("The same generator behind ganserve serve, a plain LitServe LitAPI and Ray Serve", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def _get(client: httpx.AsyncClient, url: str) -> bytes:
    r = await client.get(url)
    r.raise_for_status()
    return r.content


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> bytes:
    r = await client.post(url, json=body)
    r.raise_for_status()
    return r.content


if __name__ == "__main__":
    main()
