"""The README's pictures of a model: a seed grid, a truncation strip, style-mixing grids, an interpolation strip and
looping walk (GIF), and an SWD-by-kimg plot.

    python docs/make_figures.py --model stylegan-emoji64 --out docs/images
    python docs/make_figures.py --model progan-emoji64 --out docs/images --swd runs/progan/swd.json

Every image comes from the same sampling path as `ganserve generate` (torch backend, CPU); `--swd` takes the JSON
that `ganserve eval --model RUN_DIR --data ... --json` prints and plots it against kimg, next to the floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ganserve.imaging import encode_animation, make_grid, to_pil
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec, make_specs
from ganserve.inference.walks import interpolation_specs
from ganserve.models.weights import resolve_model

PSIS = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
WHITE = (255, 255, 255)


def _labelled(image: Image.Image, labels: list[str], left: int = 0, cell: int = 0, top: int = 14) -> Image.Image:
    """`image` with a strip of column labels above it (one per `cell` pixels, starting at `left`)."""
    out = Image.new("RGB", (image.width, image.height + top), WHITE)
    out.paste(image, (0, top))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        draw.text((left + i * cell + 2, 1), text, fill=(0, 0, 0))
    return out


def seed_grid(backend, seeds: list[int], psi: float, cols: int = 8) -> Image.Image:
    images = backend.generate(make_specs(backend.config, seeds, psi=psi))
    return to_pil(make_grid(images, cols=cols, pad=2))


def truncation_strip(backend, seeds: list[int]) -> Image.Image:
    """Rows: seeds; columns: psi from -0.5 (past the average) through 0 (the average image) to 1 (no truncation)."""
    specs = [make_spec(backend.config, s, psi=p) for s in seeds for p in PSIS]
    grid = to_pil(make_grid(backend.generate(specs), cols=len(PSIS), pad=2))
    cell = backend.config.resolution + 2
    return _labelled(grid, [f"psi {p:g}" for p in PSIS], cell=cell)


def mixing_grid(backend, row_seeds: list[int], col_seeds: list[int], layers: str, psi: float) -> Image.Image:
    """The classic layout: column seeds along the top, row seeds down the left; each cell is its row's image with
    the `layers` styles taken from its column's seed."""
    cfg, res = backend.config, backend.config.resolution
    cols = backend.generate(make_specs(cfg, col_seeds, psi=psi))
    rows = backend.generate(make_specs(cfg, row_seeds, psi=psi))
    mixed = backend.generate([make_spec(cfg, r, psi=psi, mix_seed=c, mix_layers=layers)
                              for r in row_seeds for c in col_seeds])
    blank = np.full((res, res, 3), 255, np.uint8)
    tiles = [blank, *cols]
    for i, r in enumerate(rows):
        tiles += [r, *mixed[i * len(col_seeds) : (i + 1) * len(col_seeds)]]
    grid = to_pil(make_grid(np.stack(tiles), cols=len(col_seeds) + 1, pad=2))
    return _labelled(grid, [f"{layers} styles from the top row"], top=14)


def interpolation_strip(backend, pairs: list[tuple[int, int]], steps: int, psi: float) -> Image.Image:
    """One row per (seed, to_seed): `steps` frames from one seed's image to the other's (GET /interpolate's)."""
    rows = [backend.generate(interpolation_specs(backend, pair, steps, loop=False, psi=psi)) for pair in pairs]
    return to_pil(make_grid(np.concatenate(rows), cols=steps))


def walk_gif(backend, seeds: list[int], steps: int, psi: float, scale: int = 2) -> bytes:
    """A looping walk through `seeds` (`ganserve interpolate`'s frames), each frame enlarged `scale` times."""
    frames = backend.generate(interpolation_specs(backend, seeds, steps, loop=True, psi=psi))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return encode_animation(frames, "gif", fps=20)


def swd_plot(rows: list[dict], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kimg = [r["nimg"] / 1000 for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    ax.plot(kimg, [r["fake"]["avg"] for r in rows], "o-", label=f"{name}: generated vs real")
    ax.plot(kimg, [r["floor"]["avg"] for r in rows], "--", color="grey", label="real vs real (floor)")
    for r in rows:
        if r["resolution"] != rows[-1]["resolution"] or r["alpha"] < 1:
            ax.annotate(f"{r['resolution']}²", (r["nimg"] / 1000, r["fake"]["avg"]), fontsize=7,
                        textcoords="offset points", xytext=(0, 5), ha="center")
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel("SWD x1e3 (lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory or bundled model name")
    p.add_argument("--out", default="docs/images")
    p.add_argument("--name", help="file name prefix (default: the model directory's name)")
    p.add_argument("--psi", type=float, default=1.0, help="psi of the seed grid and the mixing grids")
    p.add_argument("--swd", help="JSON rows from `ganserve eval --model RUN_DIR --json`, to plot against kimg")
    args = p.parse_args(argv)

    model_dir = resolve_model(args.model)
    name = args.name or model_dir.name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = load_backend(model_dir, "torch", "cpu")
    written = []

    def save(image: Image.Image, suffix: str) -> None:
        path = out / f"{name}-{suffix}.png"
        image.save(path, optimize=True)
        written.append(path)
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)", flush=True)

    save(seed_grid(backend, list(range(64)), args.psi), "seeds0-63")
    save(truncation_strip(backend, [0, 1, 2, 3]), "truncation")
    if backend.config.supports_mixing:
        for layers in ("coarse", "middle", "fine"):
            save(mixing_grid(backend, [10, 11, 12, 13], [20, 21, 22, 23, 24], layers, args.psi), f"mixing-{layers}")
    save(interpolation_strip(backend, [(30, 31), (32, 33), (34, 35)], 10, args.psi), "interpolation")
    path = out / f"{name}-walk.gif"
    path.write_bytes(walk_gif(backend, [40, 41, 42, 43, 44], 10, args.psi))
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)", flush=True)
    if args.swd:
        rows = json.loads(Path(args.swd).read_text())
        path = out / f"{name}-swd.png"
        swd_plot(rows, name, path)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
