"""The `ganserve` command line: info, init and import here; generate, latents and interpolate (ganserve.inference.cli),
train and eval (ganserve.train.cli), export (ganserve.export.cli), serve and sample (ganserve.serve.cli).

Owns argument parsing and turning library errors into one-line CLI errors; the work happens in the library.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ganserve.errors import GanserveError, UsageError
from ganserve.models.config import ARCHS, ModelConfig
from ganserve.models.weights import DEFAULT_MODEL

# The help of --model where it may be left out (generate, eval, export): the model `ganserve serve` serves by default.
MODEL_DEFAULT_HELP = f"(default: the bundled {DEFAULT_MODEL}, as for `ganserve serve`)"

# Subcommands that live with their package: each module has register(subparsers) adding its commands.
_SUBCOMMAND_MODULES = ("ganserve.train.cli", "ganserve.export.cli", "ganserve.serve.cli")


def default_model() -> Path:
    """The bundled default model's directory: what `generate`, `eval` and `export` use when --model is left out,
    and what `ganserve serve` serves first when given no model."""
    from ganserve.models.weights import bundled_models

    zoo = bundled_models()
    if not zoo:
        raise UsageError("no --model given and this installation bundles no model: pass a model directory, e.g. "
                       "`ganserve init --arch stylegan --resolution 64 --out m64` and then --model m64")
    return next(iter(zoo.values()))  # DEFAULT_MODEL when it is installed


def _config_from_args(args: argparse.Namespace) -> ModelConfig:
    fields = ("arch", "resolution", "z_dim", "w_dim", "img_channels", "fmap_base", "fmap_max", "mapping_layers",
              "channel_base", "channel_max", "c_dim", "conv_clamp", "architecture", "sg3_config")
    return ModelConfig(**{f: getattr(args, f) for f in fields if getattr(args, f, None) is not None})


def _add_arch_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--arch", choices=ARCHS, required=required)
    p.add_argument("--resolution", type=int, required=required, help="power of two, 4 to 1024")
    p.add_argument("--z-dim", dest="z_dim", type=int)
    p.add_argument("--w-dim", dest="w_dim", type=int)
    p.add_argument("--img-channels", dest="img_channels", type=int, choices=(1, 3))
    p.add_argument("--fmap-base", dest="fmap_base", type=int)
    p.add_argument("--fmap-max", dest="fmap_max", type=int)
    p.add_argument("--mapping-layers", dest="mapping_layers", type=int)
    p.add_argument("--channel-base", dest="channel_base", type=int, help="stylegan2: channels min(base // r, max)")
    p.add_argument("--channel-max", dest="channel_max", type=int, help="stylegan2")
    p.add_argument("--c-dim", dest="c_dim", type=int, help="stylegan2: number of classes (0 = unconditional)")
    p.add_argument("--conv-clamp", dest="conv_clamp", type=float, help="stylegan2: clamp conv outputs to +-X")
    p.add_argument("--architecture", choices=("orig", "skip", "resnet"), help="stylegan2: how toRGB outputs combine")
    p.add_argument("--config", dest="sg3_config", choices=("t", "r"),
                   help="stylegan3: T (translation equivariant) or R (rotation too: 1x1 convs, radial filters)")


# -- info ------------------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from ganserve.models import build_generator
    from ganserve.models.weights import load_config, resolve_model

    if args.model:
        if args.arch or args.resolution:
            raise UsageError("give a model directory or --arch/--resolution, not both")
        source = resolve_model(args.model)
        config = load_config(source)
    elif args.arch and args.resolution:
        source, config = None, _config_from_args(args)
    else:
        raise UsageError("give a model directory, or --arch and --resolution")
    with torch.device("meta"):  # counts parameters without allocating them
        counts = build_generator(config).parameter_counts()
    print(f"model:        {source if source else '(new, randomly initialised)'}")
    print(f"architecture: {config.arch}")
    print(f"resolution:   {config.resolution}x{config.resolution}, {config.img_channels} channel(s)")
    print(f"z_dim/w_dim:  {config.z_dim}/{config.w_dim}")
    print(f"num_ws:       {config.num_ws}  (style mixing: {'yes' if config.supports_mixing else 'no'})")
    if config.channel_schedule():
        print("channels:     " + ", ".join(f"{r}:{c}" for r, c in config.channel_schedule().items()))
    if config.arch == "stylegan2":
        clamp = "off" if config.conv_clamp is None else f"{config.conv_clamp:g}"
        print(f"stylegan2:    architecture {config.architecture}, c_dim {config.c_dim}, conv_clamp {clamp}, "
              f"mapping {config.mapping_layers} layers lr_mul {config.mapping_lr_mul:g}")
    if config.arch == "stylegan3":
        clamp = "off" if config.conv_clamp is None else f"{config.conv_clamp:g}"
        print(f"stylegan3:    config {config.sg3_config.upper()}, c_dim {config.c_dim}, conv_clamp {clamp}, "
              f"output_scale {config.output_scale:g}, mapping {config.mapping_layers} layers lr_mul "
              f"{config.mapping_lr_mul:g}")
        print(f"input:        {config.sg3_input['channels']} Fourier features at {config.sg3_input['size']}px, "
              f"bandwidth {config.sg3_input['bandwidth']:g}, sampling rate {config.sg3_input['sampling_rate']:g}")
        print("layers:       " + ", ".join(layer["name"] for layer in config.sg3_layers))
    print(f"parameters:   mapping {counts['mapping']:,}  synthesis {counts['synthesis']:,}  total {counts['total']:,}")
    if source:
        summary = config.training or {}
        print("training:     " + (", ".join(f"{k}={v}" for k, v in summary.items()) if summary else "(none recorded)"))
        if config.license:
            print(f"licence:      {config.license}")
        if config.source:
            print("source:       " + ", ".join(f"{k}={v}" for k, v in config.source.items()))


# -- init ------------------------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> None:
    import torch

    from ganserve.models import build_generator
    from ganserve.models.weights import CONFIG_NAME, save_model

    out = Path(args.out)
    if (out / CONFIG_NAME).exists() and not args.force:
        raise UsageError(f"{out} already holds a model; pass --force to overwrite it")
    config = _config_from_args(args)
    torch.manual_seed(args.seed)
    G = build_generator(config)
    G.estimate_w_avg()
    save_model(G, out)
    n = G.parameter_counts()["total"]
    size = f"{config.resolution}x{config.resolution}"
    print(f"wrote a randomly initialised {config.arch} {size} ({n:,} parameters) to {out}")


# -- import ----------------------------------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> None:
    from ganserve.models.importers import import_checkpoint

    import_checkpoint(args.checkpoint, args.out, network=args.network, license=args.license, force=args.force)


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganserve", description="ProGAN/StyleGAN generators: train, export, serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture, num_ws and parameter counts of a model or a configuration")
    p.add_argument("model", nargs="?", help="model directory or bundled model name")
    _add_arch_args(p, required=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write a randomly initialised model directory")
    _add_arch_args(p, required=True)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation")
    p.add_argument("--force", action="store_true", help="overwrite an existing model directory")
    p.set_defaults(func=cmd_init)

    importlib.import_module("ganserve.inference.cli").register(sub)  # generate, latents, interpolate

    p = sub.add_parser("import", help="turn an NVlabs StyleGAN2/3 network pickle or a rosinality checkpoint into a "
                                      "model directory (runs nothing from the file)")
    p.add_argument("checkpoint", help="network-snapshot-*.pkl of stylegan2-ada-pytorch or stylegan3, or a rosinality "
                                      "stylegan2-pytorch .pt checkpoint")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--network", choices=("G_ema", "G", "g_ema", "g"),
                   help="which generator (default the EMA one: G_ema/g_ema, else G/g)")
    p.add_argument("--license", help="licence of the weights, kept in config.json (default: the weights keep the "
                                     "licence of their source)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.set_defaults(func=cmd_import)

    for module in _SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (GanserveError, FileNotFoundError) as e:  # anything else is a bug: its traceback shows
        print(f"ganserve {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
