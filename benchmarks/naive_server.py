"""The baseline for serve_bench.py: one model behind a plain FastAPI endpoint, one request -> one forward, no batching.

Owns only that endpoint; the model, backend, torch threads and PNG encoding are the ones `ganserve serve` uses.

    python benchmarks/naive_server.py MODEL_DIR [--backend torch] [--workers 1] [--cpu-threads N] [--threads N]
This is how most GAN repositories serve: a synchronous handler that runs the generator for its request's seed and
encodes the PNG. FastAPI runs such handlers on a thread pool, so up to --threads requests compute at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import uvicorn
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response

from ganserve.devices import cpu_threads_per_worker
from ganserve.imaging import encode
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec
from ganserve.schema import MAX_SEED
from ganserve.serve.encoding import PNG_LEVEL

OPTIONS_VARIABLE = "GANSERVE_NAIVE_SERVER_OPTIONS"


def build_app(model: str, backend: str = "auto", device: str = "auto", cpu_threads: int | None = None,
              threads: int = 40) -> FastAPI:
    """The app, with the backend loaded the way a ganserve inference worker loads it (GeneratorWorker.setup)."""
    from ganserve.devices import resolve_device, setup_cpu_inference

    dev = resolve_device(device)
    if dev.type == "cpu":
        setup_cpu_inference(cpu_threads)
    generator = load_backend(model, backend, str(dev))
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads  # how many handlers run at once
        yield

    app = FastAPI(title="naive GAN server", lifespan=lifespan)

    @app.get("/generate")
    def generate(seed: int = Query(ge=0, le=MAX_SEED)) -> Response:
        spec = make_spec(generator.config, seed)
        pixels = generator.run_host(generator.prepare([spec]))[0]
        return Response(encode(pixels, "png", PNG_LEVEL), media_type="image/png",
                        headers={"X-Seed": str(seed), "X-Batch-Size": "1"})

    @app.get("/health")
    def health() -> JSONResponse:
        return JSONResponse({"status": "ready", "backend": generator.name, "describe": generator.describe()})

    return app


def create_app() -> FastAPI:
    """The app for each of several uvicorn worker processes (--workers), built from the options main() left."""
    return build_app(**json.loads(os.environ[OPTIONS_VARIABLE]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory or bundled name")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-threads", type=int, help="torch threads on CPU (default: cores less one, as ganserve serve)")
    p.add_argument("--threads", type=int, default=40, help="requests computed at once (FastAPI's default pool: 40)")
    p.add_argument("--workers", type=int, default=1, help="processes, each with the model (as --workers-per-device)")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    cpu_threads = args.cpu_threads or cpu_threads_per_worker(args.workers)
    options = dict(model=args.model, backend=args.backend, device=args.device, cpu_threads=cpu_threads,
                   threads=args.threads)
    if args.workers == 1:
        uvicorn.run(build_app(**options), host="127.0.0.1", port=args.port, log_level=args.log_level)
        return 0
    os.environ[OPTIONS_VARIABLE] = json.dumps(options)
    uvicorn.run("naive_server:create_app", factory=True, workers=args.workers, app_dir=str(Path(__file__).parent),
                host="127.0.0.1", port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
