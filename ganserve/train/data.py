"""Training images: a folder (recursive) or zip of PNG/JPEG/WebP, preprocessed once into uint8 tensors in memory.

Owns decoding (alpha over a background colour, palette/greyscale), Lanczos resize + centre crop, the per-stage
pyramid, and the batches of each step as a pure function of (seed, images shown), so resume is exact. TrainingData
holds a run's pyramid and hands out its steps with their batches.
"""

from __future__ import annotations

import io
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from ganserve.devices import cpu_cores
from ganserve.errors import DataError, RunError
from ganserve.train.config import Phase, Schedule, TrainConfig

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MIN_IMAGES = 8


# -- listing and decoding ------------------------------------------------------------------------------------------
def _sources(path: Path) -> list[tuple[str, Callable[[], bytes]]]:
    """(name, read) for every image file under a folder or inside a zip, in sorted order."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        return [(str(p.relative_to(path)), p.read_bytes) for p in files]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = sorted(
                n for n in zf.namelist()
                if Path(n).suffix.lower() in EXTENSIONS and not n.endswith("/") and not n.startswith("__MACOSX/")
            )

        # One open archive per thread: opening it re-reads the whole central directory, which for every file of a
        # large zip would make loading quadratic in its size.
        handles = threading.local()

        def reader(name: str) -> Callable[[], bytes]:
            def read() -> bytes:
                if getattr(handles, "zf", None) is None:
                    handles.zf = zipfile.ZipFile(path)
                return handles.zf.read(name)

            return read

        return [(n, reader(n)) for n in names]
    raise DataError(f"{path}: not a folder or a zip of images")


def parse_color(spec: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(spec)[:3]
    except ValueError:
        raise DataError(f"background must be a colour name or #rrggbb, got {spec!r}") from None


def load_image(data: bytes, resolution: int, channels: int = 3, background: tuple[int, int, int] = (255, 255, 255)):
    """Encoded bytes -> [C, R, R] uint8: alpha composited over `background`, centre-cropped, Lanczos-resized."""
    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info) or "A" in im.getbands():
        im = im.convert("RGBA")
        base = Image.new("RGBA", im.size, background + (255,))
        im = Image.alpha_composite(base, im)
    im = im.convert("RGB" if channels == 3 else "L")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def natural_resolution(path: str | Path) -> int:
    """The largest power of two (4..1024) that fits the shorter side of the data set's first readable image."""
    for _, read in _sources(Path(path)):
        try:
            w, h = Image.open(io.BytesIO(read())).size
        except Exception:  # noqa: BLE001 - any unreadable file is skipped here and reported by load_images
            continue
        r = 4
        while r * 2 <= min(w, h) and r < 1024:
            r *= 2
        return r
    raise DataError(f"{path}: no readable images (looked for {', '.join(EXTENSIONS)})")


def load_images(
    path: str | Path,
    resolution: int,
    channels: int = 3,
    background: str = "white",
    workers: int | None = None,
    min_images: int = MIN_IMAGES,
) -> torch.Tensor:
    """All images of a folder/zip as one [N, C, R, R] uint8 tensor. Unreadable files are skipped, with one warning."""
    path = Path(path)
    sources = _sources(path)
    if not sources:
        raise DataError(f"{path}: no images found (looked for {', '.join(EXTENSIONS)})")
    bg = parse_color(background)

    def decode(item: tuple[str, Callable[[], bytes]]):
        name, read = item
        try:
            return load_image(read(), resolution, channels, bg)
        except Exception as e:  # noqa: BLE001 - a broken file must never stop the run
            return f"{name} ({type(e).__name__})"

    workers = workers or min(8, cpu_cores())
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(decode, sources))
    bad = [r for r in results if isinstance(r, str)]
    good = [r for r in results if not isinstance(r, str)]
    if bad:
        shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        warnings.warn(f"{path}: skipped {len(bad)} unreadable file(s): {shown}", stacklevel=2)
    if len(good) < min_images:
        raise DataError(
            f"{path}: only {len(good)} usable image(s); training needs at least {min_images}"
            + (f" ({len(bad)} unreadable)" if bad else "")
        )
    return torch.from_numpy(np.stack(good))


def image_pyramid(images: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
    """uint8 [N, C, R, R] -> one uint8 tensor per stage (4x4 ... R), by 2x2 box averaging as ProGAN does."""
    levels = [images]
    x = images
    for _ in range(num_stages - 1):
        chunks = [F.avg_pool2d(c.float(), 2).round().to(torch.uint8) for c in x.split(1024)]
        x = torch.cat(chunks)
        levels.append(x)
    return levels[::-1]


# -- batches as a pure function of (seed, position) -------------------------------------------------------------------
def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(list(key)))


class BatchSource(torch.utils.data.Dataset):
    """Item `phase` -> this rank's uint8 real images of that step.

    Sample i of the run (counting all images shown) is image perm_e[i mod N] of epoch e = i // N, where perm_e is
    a permutation seeded by (seed, e); its x-flip is a coin seeded by (seed, i). Nothing depends on worker
    processes or on what came before, so a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, pyramid: list[torch.Tensor], seed: int, mirror: bool, rank: int = 0, world_size: int = 1):
        self.pyramid = pyramid
        self.n = len(pyramid[0])
        self.seed, self.mirror, self.rank, self.world_size = seed, mirror, rank, world_size
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k >= epoch - 1}
            self._perm[epoch] = _rng(self.seed, epoch, 0x6461).permutation(self.n)
        return self._perm[epoch]

    def indices(self, nimg: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Image indices and x-flip flags of this rank's share of the global batch starting at sample `nimg`."""
        if batch % self.world_size:
            raise RunError(f"batch size {batch} does not divide among {self.world_size} processes")
        per_rank = batch // self.world_size
        pos = np.arange(nimg + self.rank * per_rank, nimg + (self.rank + 1) * per_rank)
        epochs = pos // self.n
        idx = np.empty(len(pos), np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            idx[sel] = self._permutation(int(e))[pos[sel] % self.n]
        flips = np.zeros(len(pos), bool)
        if self.mirror:
            flips = _rng(self.seed, nimg, 0x666C).random(batch)[pos - nimg] < 0.5
        return idx, flips

    def __getitem__(self, phase: Phase) -> torch.Tensor:
        idx, flips = self.indices(phase.nimg, phase.batch)
        x = self.pyramid[phase.stage][torch.from_numpy(idx)]
        if flips.any():
            f = torch.from_numpy(flips)
            x[f] = x[f].flip(-1)
        return x


def batch_loader(source: BatchSource, phases: Iterable[Phase], workers: int) -> Iterable[torch.Tensor]:
    """The batches of `phases`, in order, produced in `workers` worker processes (0: in this process)."""
    return torch.utils.data.DataLoader(
        source, batch_size=None, sampler=phases, num_workers=workers, pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )


class TrainingData:
    """A run's images, decoded once into one uint8 tensor per stage, and the batches of its remaining steps."""

    def __init__(self, cfg: TrainConfig, num_stages: int):
        images = load_images(cfg.data, cfg.resolution, cfg.img_channels, cfg.background)
        self.pyramid = image_pyramid(images, num_stages)
        self.seed, self.mirror, self.workers = cfg.seed, cfg.mirror, cfg.workers

    @property
    def num_images(self) -> int:
        return len(self.pyramid[-1])

    def batches(self, schedule: Schedule, step: int, nimg: int, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[Phase, torch.Tensor]]:
        """(phase, this rank's batch) for each step from (step, nimg) to the end of `schedule`."""
        source = BatchSource(self.pyramid, self.seed, self.mirror, rank, world_size)
        loader = batch_loader(source, schedule.steps(step, nimg), self.workers)
        return zip(schedule.steps(step, nimg), loader)
