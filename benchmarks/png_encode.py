"""PNG encoding speed and size: ganserve's direct writer (`imaging.encode_png`) against Pillow, same zlib level.

The images are the bundled StyleGAN's (64x64) and the same images upscaled (bicubic) to larger sizes, which keeps them
smooth as a larger generator's would be. The two encoders alternate round by round and the median is kept.

    python benchmarks/png_encode.py                    # writes results/png_encode_cpu.md
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ganserve.imaging import encode_png
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_specs
from ganserve.models.weights import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def pillow_png(pixels: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def images(model: str, n: int, size: int) -> list[np.ndarray]:
    backend = load_backend(resolve_model(model), "torch", "cpu")
    pixels = backend.generate(make_specs(backend.config, list(range(n))))
    if size == pixels.shape[1]:
        return list(pixels)
    return [np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BICUBIC)) for p in pixels]


def time_per_image(encode, batch: list[np.ndarray], seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for pixels in batch:
            encode(pixels)
        count += len(batch)
    return (time.perf_counter() - started) / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="stylegan-emoji64", help="model directory or bundled name")
    p.add_argument("--sizes", default="64,256,1024")
    p.add_argument("--level", type=int, default=1, help="zlib level for both (the server uses 1)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.5, help="per encoder, size and round")
    p.add_argument("--out", default=str(RESULTS / "png_encode_cpu.md"))
    args = p.parse_args()

    encoders = {"Pillow": lambda x: pillow_png(x, args.level), "ganserve": lambda x: encode_png(x, args.level)}
    lines = [
        "# PNG encoding: ganserve's writer vs Pillow", "",
        f"Command: `python benchmarks/png_encode.py --sizes {args.sizes} --level {args.level} --rounds {args.rounds}`",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"Pillow {Image.__version__}, numpy {np.__version__}; one thread. Images: `{args.model}` seeds 0-15.", "",
        "| size | Pillow ms | ganserve ms | speed-up | Pillow bytes | ganserve bytes | size ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in (int(s) for s in args.sizes.split(",")):
        batch = images(args.model, 16, size)
        for pixels in batch:  # both must give back exactly these pixels
            for encode in encoders.values():
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode(pixels)))), pixels)
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.rounds):
            for name, encode in encoders.items():
                times[name].append(time_per_image(encode, batch, args.seconds))
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        size_of = {name: statistics.mean(len(encode(x)) for x in batch) for name, encode in encoders.items()}
        row = (f"| {size}x{size} | {ms['Pillow']:.3f} | {ms['ganserve']:.3f} | {ms['Pillow'] / ms['ganserve']:.2f}x | "
               f"{size_of['Pillow']:.0f} | {size_of['ganserve']:.0f} | {size_of['ganserve'] / size_of['Pillow']:.3f} |")
        print(row, flush=True)
        lines.append(row)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
