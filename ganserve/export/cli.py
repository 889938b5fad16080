"""The `ganserve export` subcommand: a model directory to ONNX graphs or TensorRT engines, with a manifest.

Owns the export flags and their one-line errors; the work is in onnx_export.py and tensorrt.py.
"""

from __future__ import annotations

import argparse
import errno

from ganserve.cli import MODEL_DEFAULT_HELP
from ganserve.errors import UsageError
from ganserve.export.artifacts import DEFAULT_MAX_BATCH, DEFAULT_OPSET


def cmd_export(args: argparse.Namespace) -> None:
    # Errors are raised as ValueError: the CLI prints those as one line with exit status 2 (also when it runs as
    # `python -m ganserve.cli`, where its UsageError class is another object than ganserve.cli.UsageError).
    from ganserve.cli import default_model
    from ganserve.errors import BackendUnavailable, ExportError
    from ganserve.models.weights import resolve_model

    if args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    model = resolve_model(args.model) if args.model else default_model()
    progress = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    try:
        if args.format == "onnx":
            from ganserve.export.onnx_export import export_onnx

            out = export_onnx(model, args.out, args.max_batch, args.fp16, args.opset, progress=progress)
        else:
            from ganserve.devices import resolve_device
            from ganserve.export.tensorrt import export_tensorrt

            device = resolve_device(args.device)
            out = export_tensorrt(model, args.out, args.max_batch, args.fp16, device, progress=progress)
    except (ExportError, BackendUnavailable) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    except OSError as e:  # e.g. the default folder inside the bundled model of a read-only installation
        message = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e).splitlines()[0]
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            message += "; write the export elsewhere with --out DIR"
        raise UsageError(message) from None
    if args.quiet:
        print(out)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX or TensorRT (artifacts + manifest.json)")
    p.add_argument("--model", help=f"model directory or bundled model name {MODEL_DEFAULT_HELP}")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--fp16", action="store_true",
                   help="float16 synthesis weights (for GPUs; the ONNX CPU provider needs fp32)")
    p.add_argument("--max-batch", dest="max_batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch of the dynamic batch axis / TensorRT profile (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--device", default="auto", help="TensorRT: the GPU to build for (auto, cuda, cuda:N)")
    p.add_argument("--out", help="output folder (default: MODEL_DIR/onnx, MODEL_DIR/onnx-fp16 or "
                                 "MODEL_DIR/tensorrt/GPU-TRTVERSION-PRECISION-bMAX)")
    p.add_argument("--quiet", action="store_true", help="print only the output folder")
    p.set_defaults(func=cmd_export)
