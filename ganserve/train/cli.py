"""The `ganserve train` and `ganserve eval` subcommands (also `python -m ganserve.train`).

Owns mapping flags onto TrainConfig fields (one flag per field) and printing the SWD report; the work is in the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

from ganserve.cli import MODEL_DEFAULT_HELP
from ganserve.errors import UsageError
from ganserve.models.config import TRAINABLE_ARCHS, stage_resolution
from ganserve.train.config import LOSSES, RESUME_OVERRIDABLE, TrainConfig, parse_batch_sizes

# field -> (flag help, type); booleans get --flag/--no-flag.
_HELP = {
    "data": "folder (searched recursively) or zip of PNG/JPEG/WebP images",
    "out": "run directory (config, checkpoints, samples, tensorboard, model/)",
    "arch": "network architecture: progan and stylegan grow from 4x4 (--fade-kimg, --stab-kimg); stylegan2 "
            "trains at the full resolution for --final-kimg, with a residual discriminator",
    "resolution": "final resolution (default: largest power of two that fits the first image)",
    "img_channels": "1 (greyscale) or 3 (RGB)",
    "grow": "progressive growing from 4x4 (on for progan and stylegan, always; --grow trains stylegan2 that way "
            "too, with ProGAN's discriminator and no path length regularisation)",
    "fade_kimg": "kimg of fade_in per new resolution (paper: 600)",
    "stab_kimg": "kimg of stabilising per resolution (paper: 600)",
    "final_kimg": "kimg at the final resolution, for stylegan2 the whole run (default: stab-kimg)",
    "kimg_scale": "multiply every schedule length by this, e.g. 0.01 for a quick run",
    "batch_sizes": "global batch per resolution: one number, or res:batch pairs like 4:64,8:64,16:32",
    "loss": "wgan_gp (ProGAN default) or logistic with r1 (StyleGAN default)",
    "reg_interval": "apply the gradient penalty (gp or r1) on every Nth discriminator step only, weighted N times "
                    "(lazy regularisation, as StyleGAN2: 16 there); the penalty is about 45%% of a step's time",
    "pl_weight": "path length regularisation of G (stylegan2 only; default 2 there, as StyleGAN2; 0 turns it off)",
    "pl_interval": "apply path length regularisation on every Nth generator step, weighted N times",
    "ema_kimg": "half-life of the generator EMA in kimg (scaled by kimg-scale)",
    "style_mixing_prob": "style_mixing regularisation probability (StyleGAN)",
    "mirror": "random x-flip augmentation",
    "augment": "differentiable augmentation of everything D sees, reals and fakes alike (DiffAugment): a comma "
               "list of translation, cutout, color, e.g. translation,cutout; against a discriminator that "
               "memorises a small data set (default none)",
    "background": "colour that transparent images are composited over",
    "workers": "DataLoader worker processes (0: load in the training process)",
    "device": "auto, cpu or cuda",
    "amp": "bf16 mixed precision, on CUDA and on CPUs with bfloat16 instructions (AVX512-BF16, AMX)",
    "channels_last": "channels-last memory format (faster convolutions on CUDA and the CPU)",
    "checkpoint_kimg": "checkpoint and sample grid every this many kimg (and at every stage end)",
    "grid_seeds": "seeds of the sample grids",
    "metric_num": "images for the final SWD (0: skip)",
    "tensorboard": "TensorBoard logs (when tensorboard is installed)",
    "progress": "progress bar",
    "license": "licence/attribution of the data, stored in the model's config.json",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = _HELP.get(f.name, "")
        default = defaults[f.name].default
        if f.name == "batch_sizes":
            p.add_argument("--batch-size", "--batch-sizes", dest="batch_sizes", type=parse_batch_sizes, help=help_)
        elif f.name == "betas":
            p.add_argument("--betas", type=lambda s: tuple(float(x) for x in s.split(",")),
                           help="Adam betas (default 0,0.99)")
        elif f.type in ("bool", bool, "bool | None"):
            show = "" if default is None else f" (default {'on' if default else 'off'})"
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help_}{show}".strip())
        elif f.name == "arch":
            p.add_argument(flag, dest=f.name, choices=TRAINABLE_ARCHS, help=help_)
        elif f.name == "loss":
            p.add_argument(flag, dest=f.name, choices=LOSSES, help=help_)
        else:
            kind = str(f.type)
            conv = int if "int" in kind else float if "float" in kind else str
            show = "" if default is dataclasses.MISSING or default in (None, "") else f" (default {default})"
            p.add_argument(flag, dest=f.name, type=conv, help=f"{help_}{show}".strip())


def _one_line_warnings() -> None:
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def cmd_train(args: argparse.Namespace) -> None:
    from ganserve.train.trainer import train

    _one_line_warnings()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"{args.config}: cannot read the training config ({e})") from None
        given = {**base, **given}
    if args.resume:
        if args.config:
            raise UsageError("--resume continues a run with its saved config; --config cannot replace it")
        model_dir = train(TrainConfig(), resume=args.resume, resume_overrides=given)
    else:
        if not given.get("data"):
            raise UsageError("--data is required (a folder or zip of images), or --resume RUN_DIR")
        if not Path(given["data"]).exists():
            raise UsageError(f"{given['data']}: no such file or directory")
        model_dir = train(TrainConfig.from_dict(given))
    if model_dir is not None:
        print(f"model written to {model_dir}")


def cmd_eval(args: argparse.Namespace) -> None:
    from ganserve.cli import default_model
    from ganserve.devices import resolve_device
    from ganserve.inference.sampling import check_class
    from ganserve.models.weights import load_model, resolve_model
    from ganserve.train.checkpoint import CHECKPOINT_DIR, list_checkpoints
    from ganserve.train.data import load_images
    from ganserve.train.evaluate import (
        RealReference,
        checkpoint_generator,
        evaluate_swd,
        format_checkpoint_row,
        format_report,
    )

    _one_line_warnings()
    if args.num < 1:
        raise UsageError(f"--num must be positive, got {args.num}")
    device = resolve_device(args.device)
    if not Path(args.data).exists():
        raise UsageError(f"{args.data}: no such file or directory")
    target = Path(args.model) if args.model else default_model()
    if target.suffix == ".pt" or (target / CHECKPOINT_DIR).is_dir():  # a training checkpoint, or a whole run's
        checkpoints = [target] if target.suffix == ".pt" else list_checkpoints(target)
        if not checkpoints or not checkpoints[0].is_file():
            raise UsageError(f"{target}: no training checkpoint there")
        reference, rows = None, []
        for path in checkpoints:
            G, position = checkpoint_generator(path, device)
            cfg = G.config
            if reference is None:  # the reals and the floor, once for the whole run
                reals = load_images(args.data, cfg.resolution, cfg.img_channels, args.background, min_images=2)
                reference = RealReference(reals, args.num, args.seed)
            result = reference.score(G, args.batch_size, device, stage=position["stage"], alpha=position["alpha"],
                                     class_idx=args.class_idx)
            resolution = stage_resolution(position["stage"])
            rows.append({"checkpoint": path.name, **position, "resolution": resolution, **result})
            if not args.json:
                print(format_checkpoint_row(position, result, cfg.resolution), flush=True)
        if args.json:
            print(json.dumps(rows))
        return
    G = load_model(resolve_model(args.model) if args.model else target, device)
    cfg = G.config
    if args.class_idx is not None:
        check_class(args.class_idx, cfg.c_dim)  # a bad --class fails before the data is read
    reals = load_images(args.data, cfg.resolution, cfg.img_channels, args.background, min_images=2)
    result = evaluate_swd(G, reals, args.num, args.batch_size, args.seed, device, class_idx=args.class_idx)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a ProGAN/StyleGAN with progressive growing")
    p.add_argument("--resume", metavar="RUN_OR_CHECKPOINT",
                   help="continue a run exactly from its last checkpoint; only "
                        + ", ".join("--" + f.replace("_", "-") for f in RESUME_OVERRIDABLE) + " may change "
                        "(--final-kimg: train longer, or stop now)")
    p.add_argument("--config", help="train_config.json to start from (flags override it)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="SWD of a model against a data set, next to the real-vs-real floor")
    p.add_argument("--model",
                   help=f"model directory or bundled model name {MODEL_DEFAULT_HELP}; or a training checkpoint "
                        "(.pt), or a run directory to score each of its checkpoints (images of a network still "
                        "growing are upsampled)")
    p.add_argument("--data", required=True, help="folder or zip of real images")
    p.add_argument("--num", type=int, default=10000, help="images per set (capped at half the data set)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the real halves, the SWD projections and a class-conditional model's classes")
    p.add_argument("--class", dest="class_idx", type=int,
                   help="a class-conditional model: score only this class in [0, c_dim) (default: classes drawn "
                        "uniformly, seeded by --seed)")
    p.add_argument("--background", default="white")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    """`python -m ganserve.train ...` is `ganserve train ...`."""
    import sys

    from ganserve.cli import main as ganserve_main

    return ganserve_main(["train", *(sys.argv[1:] if argv is None else argv)])
