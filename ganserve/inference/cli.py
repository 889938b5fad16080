"""The image-making subcommands (registered by ganserve.cli): `generate` (seeds, or z/w latents from a file),
`latents` (a file of the seeds' z and w) and `interpolate` (walks through seeds as an animation or frames).

Owns their flags, reading latent files and writing animations; the work happens in ganserve.inference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ganserve.cli import MODEL_DEFAULT_HELP, default_model
from ganserve.errors import SpecError, UsageError
from ganserve.inference.registry import BACKEND_CHOICES
from ganserve.models.config import ModelConfig
from ganserve.schema import (
    ANIMATION_FORMATS,
    FPS_MAX,
    LATENT_PARAMS,
    LATENT_SPACES,
    SEEDS,
    add_flags,
    add_precision_flag,
    parse_seeds,
    spec_kwargs,
)


# -- generate ---------------------------------------------------------------------------------------------------
def read_latent_file(path: str, name: str) -> np.ndarray:
    """The array of a --z/--w FILE: a .npy file, or the array `name` of an .npz file (what `ganserve latents`
    writes). UsageError naming the flag when the file cannot be read as one; its shape and values are checked against
    the model after (latent_specs)."""
    flag, p = f"--{name}", Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise UsageError(f"{flag} {path}: give a .npy file or an .npz file holding an array named {name!r}")
    if not p.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    held: list[str] = []
    try:
        if suffix == ".npy":
            array = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as data:
                held = list(data.files)
                array = data[name] if name in held else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{flag} {path}: not a readable {suffix} array of numbers ({reason})") from None
    if array is None:
        raise UsageError(f"{flag} {path}: the .npz file holds no array named {name!r} (it holds: "
                         f"{', '.join(held) or 'none'})")
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise UsageError(f"{flag} {path}: expected an array of numbers, got {getattr(array, 'dtype', type(array))}")
    return array


def latent_specs(config: ModelConfig, name: str, path: str, array: np.ndarray, **params) -> list:
    """The specs of the latents `array` of a --z or --w file, with the image parameters `params`; the errors name the
    flag at fault."""
    from ganserve.inference.sampling import make_latent_specs

    try:
        return make_latent_specs(config, **{name: array}, **params)
    except SpecError as e:
        if e.field in ("z", "w"):
            raise UsageError(f"--{name} {path}: {e}") from None
        if name == "w" and e.field in ("psi", "truncation_cutoff", "mix_seed", "mix_layers", "class"):
            flag = "--" + e.field.replace("_", "-")
            raise UsageError(f"{flag} does not apply to --w, whose ws are used as given: apply it when making them "
                             f"(ganserve latents {flag} ...)") from None
        raise


def cmd_generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ganserve.devices import default_batch_size, keep_freed_memory
    from ganserve.imaging import make_grid, to_pil
    from ganserve.inference.bulk import default_generate_workers, write_images
    from ganserve.inference.registry import load_backend
    from ganserve.inference.sampling import make_specs

    given = [flag for flag, value in (("--seeds", args.seeds), ("--z", args.z), ("--w", args.w)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --seeds, --z FILE and --w FILE" +
                         (f", not {' and '.join(given)}" if given else ""))
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: batch size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    name = "z" if args.z is not None else "w"
    latents = read_latent_file(getattr(args, name), name) if seeds is None else None
    backend = load_backend(args.model or default_model(), args.backend, args.device, precision=args.precision)
    if backend.device.type == "cpu":
        keep_freed_memory()  # the batches' buffers are reused instead of faulted in afresh
    if seeds is not None:
        specs = make_specs(backend.config, seeds, **spec_kwargs(args))
    else:
        specs = latent_specs(backend.config, name, getattr(args, name), latents, **spec_kwargs(args))
    workers = args.workers or default_generate_workers(backend)
    desc = f"generate ({backend.describe()}" + (f", {workers} processes)" if workers > 1 else ")")
    with tqdm(total=len(specs), unit="img", desc=desc, disable=args.quiet) as bar:
        images = write_images(backend, specs, Path(args.outdir), args.format,
                              args.batch_size or default_batch_size(backend.device), workers,
                              keep=bool(args.grid), progress=bar.update)
    if args.grid:
        grid = Path(args.grid)
        grid.parent.mkdir(parents=True, exist_ok=True)
        to_pil(make_grid(list(images))).save(grid)
    if not args.quiet:
        print(f"wrote {len(specs)} images to {args.outdir}" + (f" and a grid to {args.grid}" if args.grid else ""))


# -- latents ---------------------------------------------------------------------------------------------------
LATENTS_CHUNK = 1024  # seeds mapped at once


def cmd_latents(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ganserve.files import atomic_write
    from ganserve.inference.registry import load_backend
    from ganserve.inference.sampling import iter_batches, make_specs
    from ganserve.models.latents import seeds_to_z
    from ganserve.models.weights import load_config, resolve_model

    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise UsageError(f"--out {args.out}: the latents are written as an .npz file: give a name ending in .npz")
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder: give a file name ending in .npz")
    seeds = parse_seeds(args.seeds)
    model = args.model or default_model()
    config = load_config(resolve_model(model))  # a ProGAN's latents need no backend: they are the seeds' zs
    params = spec_kwargs(args)
    specs = make_specs(config, seeds, **params)  # checks every parameter against the model
    arrays = {"seeds": np.asarray(seeds, np.int64), "z": seeds_to_z(seeds, config.z_dim)}
    if config.supports_mixing:
        backend = load_backend(model, args.backend, args.device)
        ws = []
        with tqdm(total=len(specs), unit="seed", desc=f"latents ({backend.describe()})", disable=args.quiet) as bar:
            for batch in iter_batches(specs, LATENTS_CHUNK):
                ws.append(backend.latents(batch))
                bar.update(len(batch))
        arrays["w"] = np.concatenate(ws).astype(np.float32, copy=False)
    else:
        for flag, name in (("--psi", "psi"), ("--truncation-cutoff", "truncation_cutoff")):
            if name in params:
                raise UsageError(f"{flag}: {config.arch} has no w space, so its latents are the seeds' z, which "
                                 f"{flag} does not change (give it to `ganserve generate --z` instead)")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, write)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items() if k != "seeds")
    note = "" if "w" in arrays else f" (no w: {config.arch} has no w space)"
    print(f"wrote the latents of {len(seeds)} seeds to {out}: {shapes}{note}")


# -- interpolate -----------------------------------------------------------------------------------------------
# The shared image flags of an interpolation; --noise is its own (const or none: random noise is drawn from a seed,
# and the frames between seeds have none), and the file format follows --out.
INTERPOLATE_PARAMS = (*LATENT_PARAMS, "rotate", "translate")
VIDEO_FORMATS = ("mp4",)
FRAME_FORMAT = "png"  # the files of a folder of frames


def _output_kind(out: Path) -> str:
    """What --out of `interpolate` is: gif, webp, mp4 (one file) or dir (a folder of frames)."""
    suffix = out.suffix.lower().lstrip(".")
    if out.is_dir() or not suffix:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file: give a folder for the frames, or a .gif, .webp or .mp4 file")
        return "dir"
    if suffix in ANIMATION_FORMATS or suffix in VIDEO_FORMATS:
        return suffix
    kinds = ", ".join(f".{k}" for k in (*ANIMATION_FORMATS, *VIDEO_FORMATS))
    raise UsageError(f"--out {out}: write the frames to a {kinds} file, or to a folder (a name without a suffix)")


def _video_writer(path: str, fps: float):
    """An imageio writer of an H.264 .mp4 file (imageio with imageio-ffmpeg: the `video` extra)."""
    import imageio.v2 as imageio

    return imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                              macro_block_size=8, ffmpeg_log_level="error")


def _check_video_support() -> None:
    try:
        import imageio.v2  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise UsageError("writing .mp4 needs imageio and imageio-ffmpeg: pip install 'ganserve[video]' "
                         "(or write a .gif, a .webp or a folder of frames)") from None


def cmd_interpolate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ganserve.devices import default_batch_size, keep_freed_memory
    from ganserve.files import atomic_write
    from ganserve.imaging import encode, encode_animation
    from ganserve.inference.registry import load_backend
    from ganserve.inference.sampling import iter_batches
    from ganserve.inference.walks import check_walk, interpolation_specs

    out = Path(args.out)
    kind = _output_kind(out)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: batch size must be at least 1, got {args.batch_size}")
    if args.steps < 2:
        raise UsageError(f"--steps: frames per leg, both ends included, must be at least 2, got {args.steps}")
    if not 1 <= args.fps <= FPS_MAX:  # also refuses nan
        raise UsageError(f"--fps must be in [1, {FPS_MAX}], got {args.fps:g}")
    if kind == "mp4":
        _check_video_support()
    seeds = parse_seeds(args.seeds)
    if len(seeds) < 2:
        raise UsageError(f"--seeds: an interpolation walks between at least 2 seeds, got {len(seeds)} ({args.seeds})")
    backend = load_backend(args.model or default_model(), args.backend, args.device)
    if backend.device.type == "cpu":
        keep_freed_memory()
    try:
        space = check_walk(backend.config, seeds, args.steps, args.space)
    except SpecError as e:
        raise UsageError(f"--{e.field}: {e}" if e.field == "space" else str(e)) from None
    specs = interpolation_specs(backend, seeds, args.steps, space, args.loop, **spec_kwargs(args))

    frames: list[np.ndarray] = []
    writer, tmp = None, None
    if kind == "dir":
        out.mkdir(parents=True, exist_ok=True)
    elif kind == "mp4":
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp.mp4")
        os.close(fd)
        writer = _video_writer(tmp, args.fps)
    try:
        desc = f"interpolate ({backend.describe()})"
        index = 0
        with tqdm(total=len(specs), unit="frame", desc=desc, disable=args.quiet) as bar:
            for batch in iter_batches(specs, args.batch_size or default_batch_size(backend.device)):
                for image in backend.generate(batch):
                    if kind == "dir":
                        (out / f"frame{index:04d}.{FRAME_FORMAT}").write_bytes(encode(image, FRAME_FORMAT))
                    elif writer is not None:
                        writer.append_data(image if image.shape[2] == 3 else np.repeat(image, 3, axis=2))
                    else:
                        frames.append(image)
                    index += 1
                bar.update(len(batch))
        if writer is not None:
            writer.close()
            writer = None
            os.replace(tmp, out)
        elif kind != "dir":
            data = encode_animation(frames, kind, args.fps)
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, lambda path: Path(path).write_bytes(data))
    finally:
        if writer is not None:
            writer.close()
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    if not args.quiet:
        walk = "a loop" if args.loop else "an open walk"
        print(f"wrote {len(specs)} frames ({walk} through {len(seeds)} seeds in {space} space, {args.steps} frames "
              f"per leg) to {out}" + (f", {args.fps:g} fps" if kind != "dir" else ""))


# -- parser ----------------------------------------------------------------------------------------------------
def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch, at most (default 8 on the CPU, 32 on a GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend; auto: the fastest that runs here (default)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write images for a list of seeds, or for the z or w latents of a file")
    p.add_argument("--model", help=f"model directory or bundled model name {MODEL_DEFAULT_HELP}")
    p.add_argument("--seeds", help=SEEDS.cli_help + "; files seed0042.png, ... (give one of --seeds, --z and --w)")
    p.add_argument("--z", metavar="FILE",
                   help="in place of --seeds: z vectors [N, z_dim] (or one [z_dim]) from a .npy file or the array "
                        "'z' of an .npz file such as `ganserve latents` writes; mapping, psi, mixing and class apply "
                        "as for a seed's z; files latent0000.png, ... (by the place in the file)")
    p.add_argument("--w", metavar="FILE",
                   help="in place of --seeds (StyleGAN only): ws [N, num_ws, w_dim], exactly what the synthesis "
                        "network receives, or [N, w_dim] used for every layer, from a .npy file or the array 'w' of "
                        "an .npz file such as `ganserve latents` writes; used as given (no --psi, mixing or --class: "
                        "`ganserve latents` applies them); files latent0000.png, ...")
    add_flags(p)
    _add_backend_flags(p)
    p.add_argument("--workers", type=int,
                   help="processes generating and writing at once (default: one per core on the CPU, 1 on a GPU)")
    add_precision_flag(p)
    p.add_argument("--outdir", required=True)
    p.add_argument("--grid", help="also write all images as one grid PNG here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("latents", help="write the z and w latents of seeds to an .npz file (for generate --z/--w)",
                       description="Write seeds (int64 [N]), z ([N, z_dim] float32: each seed's z) and, for a "
                                   "StyleGAN model, w ([N, num_ws, w_dim] float32: the ws its synthesis network "
                                   "receives for the seed, after mapping, truncation and mixing) to an .npz file. "
                                   "`ganserve generate --w FILE` with the same backend makes the same images as "
                                   "--seeds with these flags. ProGAN has no w space: its file holds seeds and z "
                                   "only.")
    p.add_argument("--model", help=f"model directory or bundled model name {MODEL_DEFAULT_HELP}")
    p.add_argument("--seeds", required=True, help=SEEDS.cli_help)
    p.add_argument("--out", required=True, help="the .npz file to write")
    add_flags(p, LATENT_PARAMS)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend; auto: the fastest that runs here (default; use the one that will "
                        "generate from the file: ws agree across backends only within rounding)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_latents)

    p = sub.add_parser("interpolate", help="an animation (.gif, .webp, .mp4) or frames walking through seeds",
                       description="Frames walking through the seeds in order, --steps frames from each to the "
                                   "next (both included). StyleGAN walks its w space by default (straight steps "
                                   "between the seeds' ws, truncation and mixing applied) or z (--space z: steps "
                                   "along great circles between the zs); ProGAN walks z only. The first frame is "
                                   "the first seed's image from `ganserve generate` with the same flags, bit for "
                                   "bit, and so is the last seed's the last frame of a --no-loop walk.")
    p.add_argument("--model", help=f"model directory or bundled model name {MODEL_DEFAULT_HELP}")
    p.add_argument("--seeds", required=True, help="at least 2 seeds, walked in the given order, e.g. 1,5,9")
    p.add_argument("--steps", type=int, default=24,
                   help="frames from one seed to the next, both included (default 24: one second a leg at 24 fps)")
    p.add_argument("--out", required=True,
                   help="a .gif, .webp or .mp4 file (.mp4 needs pip install 'ganserve[video]'), or a folder (a name "
                        "without a suffix, or an existing folder) for frame0000.png, ...")
    p.add_argument("--space", choices=LATENT_SPACES,
                   help="w: straight steps between the seeds' ws (StyleGAN; the default there); z: great-circle steps "
                        "between the seeds' zs (the default, and the only choice, for ProGAN)")
    p.add_argument("--fps", type=float, default=24.0, help=f"frames per second of the animation, 1 to {FPS_MAX} "
                                                             "(default 24)")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True,
                   help="end with a leg back towards the first seed, stopping one frame short of it, so that the "
                        "animation repeats seamlessly (default); --no-loop ends at the last seed")
    add_flags(p, INTERPOLATE_PARAMS)
    p.add_argument("--noise", dest="noise", choices=("const", "none"),
                   help="const (the saved noise maps, the default) or none (StyleGAN); random noise is drawn from "
                        "an image's seed, and the frames between seeds have none")
    _add_backend_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_interpolate)
