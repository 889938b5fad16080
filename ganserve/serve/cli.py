"""The `ganserve serve` and `ganserve sample` subcommands (registered by ganserve.cli).

Owns their flags and how they map onto ServeOptions and the client; the work happens in ganserve.serve and client.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ganserve.devices import DEVICE_CHOICES
from ganserve.errors import UsageError
from ganserve.schema import SEEDS, add_flags, add_precision_flag, image_filename, parse_seeds, spec_kwargs


def cmd_serve(args: argparse.Namespace) -> None:
    from ganserve.errors import ServeError
    from ganserve.serve.server import ServeOptions, serve

    fields = ServeOptions.__dataclass_fields__
    opts = ServeOptions(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    if opts.api_key is None and os.environ.get("GANSERVE_API_KEY"):
        opts.api_key = os.environ["GANSERVE_API_KEY"]
    for name in ("max_batch_size", "devices", "workers_per_device", "max_queue", "max_seeds", "max_body_bytes"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if opts.batch_timeout_ms < 0:
        raise UsageError("--batch-timeout-ms must not be negative")
    try:
        serve(opts)
    except ServeError as e:
        raise UsageError(str(e)) from None


def cmd_sample(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ganserve.client import Client, ServerError

    seeds = parse_seeds(args.seeds)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    params = {**spec_kwargs(args), "model": args.model, "format": args.format}
    api_key = args.api_key or os.environ.get("GANSERVE_API_KEY")
    try:
        with Client(args.url, api_key=api_key) as client, tqdm(
            total=len(seeds), unit="img", desc=f"sample {args.url}", disable=args.quiet
        ) as bar:
            for seed, data in client.generate_many_bytes(seeds, concurrency=args.concurrency, **params):
                (outdir / image_filename(seed, args.format)).write_bytes(data)
                bar.update(1)
    except ServerError as e:
        raise UsageError(f"the server said: {e}") from None
    except OSError as e:  # connection refused, DNS, a full disk
        raise UsageError(f"{type(e).__name__}: {e}") from None
    if not args.quiet:
        print(f"wrote {len(seeds)} images to {outdir}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP with dynamic batching",
                       description="Serve one or more models over HTTP. See GET /docs on the running server.")
    p.add_argument("models", nargs="*", metavar="MODEL_DIR_OR_NAME",
                   help="model directories or bundled names (NAME=DIR names one); the first is the default")
    p.add_argument("--backend", default="auto", help="auto (torch), torch, compile, onnxruntime or tensorrt")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICE_CHOICES)} or cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default), 0.0.0.0 or ::")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="images per device batch, at most (default 8 on the CPU, 32 on a GPU); under light load a "
                        "worker's batch closes at its fair share of the images in the server")
    p.add_argument("--batch-timeout-ms", type=float, default=5.0,
                   help="how long a batch waits to fill up to that share (default 5 ms)")
    p.add_argument("--devices", type=int, default=1, help="GPUs to use (default 1)")
    p.add_argument("--workers-per-device", type=int,
                   help="inference processes per device (default: 1 per GPU; on the CPU one per core, at most 4 "
                        "with --backend torch)")
    p.add_argument("--max-queue", type=int, default=512,
                   help="images queued or on the device before new requests get 503 (default 512)")
    p.add_argument("--max-seeds", type=int, default=1024,
                   help="seeds, latents or interpolation frames per request; more is a 413 (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20,
                   help="request body size; more is a 413 (default 8 MiB: 40 ws of a 1024x1024 StyleGAN2 as JSON)")
    p.add_argument("--api-key", help="require this key in X-API-Key (or set GANSERVE_API_KEY); /health stays open")
    p.add_argument("--encode-threads", type=int, help="PNG/JPEG/WebP encoding threads (default: cores, at most 8)")
    p.add_argument("--cpu-threads", type=int,
                   help="torch threads per worker on CPU (default: the cores less one, shared among the workers, >= 1)")
    add_precision_flag(p)
    p.add_argument("--timeout-s", type=float, default=60.0, help="an image queued longer than this fails with 504")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("sample", help="fetch images for many seeds from a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server address (default http://127.0.0.1:8000)")
    p.add_argument("--seeds", required=True, help=SEEDS.cli_help)
    p.add_argument("--outdir", required=True)
    p.add_argument("--model", help="served model name (default: the server's default)")
    add_flags(p)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--api-key", help="the server's API key (or set GANSERVE_API_KEY)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sample)
