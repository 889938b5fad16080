"""`ganserve serve` against the same generator behind a plain LitServe LitAPI with batching, under the same load.

Both servers run the same model, backend, inference processes (one torch thread each), PNG encoder and max batch;
the peer is what the LitServe documentation shows: a LitAPI whose decode_request reads {"seed": N} from a POST,
predict runs the batch, encode_response returns the PNG. A closed-loop load (C clients, each sending its next request
when the previous answer is in, random seeds) runs against each server in turn, rounds alternating who goes first;
both servers stay up throughout, loaded one at a time. Reports images/s and p50/p99 per server and concurrency, and
ganserve / peer from the medians.

    python benchmarks/peers.py [--model stylegan-emoji64] [--backend torch] [--workers 2] [--max-batch-size 32]
        [--concurrency 1,8,32] [--duration 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import litserve as ls
from fastapi import Response

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"peers: a server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"peers: {url} did not become ready")


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="stylegan-emoji64")
    p.add_argument("--backend", default="torch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve-peer", type=int, help=argparse.SUPPRESS)  # internal: run the peer server on this port
    args = p.parse_args()
    if args.serve_peer:
        serve_peer(args.model, args.backend, args.workers, args.max_batch_size, args.serve_peer)
        return

    ports = {"ganserve": free_port(), "litserve": free_port()}
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        logs = {name: open(Path(tmp) / f"{name}.log", "w") for name in ports}
        procs = {
            "ganserve": subprocess.Popen(
                [sys.executable, "-m", "ganserve.cli", "serve", args.model, "--backend", args.backend, "--device",
                 "cpu", "--workers-per-device", str(args.workers), "--cpu-threads", "1", "--max-batch-size",
                 str(args.max_batch_size), "--port", str(ports["ganserve"]), "--log-level", "warning"],
                stdout=logs["ganserve"], stderr=subprocess.STDOUT),
            "litserve": subprocess.Popen(
                [sys.executable, __file__, "--model", args.model, "--backend", args.backend, "--workers",
                 str(args.workers), "--max-batch-size", str(args.max_batch_size), "--serve-peer",
                 str(ports["litserve"])], stdout=logs["litserve"], stderr=subprocess.STDOUT),
        }
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            for name in procs:
                wait_ready(urls[name], procs[name])
            requests = {
                "ganserve": lambda c, s: _get(c, f"{urls['ganserve']}/generate?seed={s}"),
                "litserve": lambda c, s: _post(c, f"{urls['litserve']}/predict", {"seed": s}),
            }
            print(f"# {args.model}, backend {args.backend}, {args.workers} processes x 1 thread, max batch "
                  f"{args.max_batch_size}; {args.rounds} rounds of {args.duration:g} s", flush=True)
            print("| clients | ganserve img/s | p50 / p99 ms | LitServe LitAPI img/s | p50 / p99 ms | "
                  "ganserve / LitServe |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
            for clients in (int(c) for c in args.concurrency.split(",")):
                rows: dict[str, list[dict]] = {name: [] for name in procs}
                for r in range(args.rounds):
                    for name in (("ganserve", "litserve") if r % 2 == 0 else ("litserve", "ganserve")):
                        rows[name].append(asyncio.run(load(requests[name], clients, args.warmup, args.duration)))
                med = {name: {k: statistics.median(row[k] for row in rows[name]) for k in rows[name][0]}
                       for name in rows}
                g, lt = med["ganserve"], med["litserve"]
                print(f"| {clients} | {g['images_per_s']:.0f} | {g['p50_ms']:.0f} / {g['p99_ms']:.0f} | "
                      f"{lt['images_per_s']:.0f} | {lt['p50_ms']:.0f} / {lt['p99_ms']:.0f} | "
                      f"{g['images_per_s'] / lt['images_per_s']:.2f} |", flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


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
