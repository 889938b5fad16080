"""Many images to files: batches spread over worker processes (on the CPU one per core, as `ganserve serve` runs),
each generating a batch and writing its files before taking the next, so that encoding overlaps generation and every
core works. An image's pixels do not depend on which process or batch made it (the same-pixels rule of the
backends), so the files equal those of one process or of the server."""

from __future__ import annotations

import math
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from ganserve.devices import cpu_cores, cpu_threads_per_worker, setup_cpu_inference
from ganserve.imaging import encode
from ganserve.inference.backend import Backend
from ganserve.inference.registry import TORCH_BACKENDS, load_backend
from ganserve.inference.sampling import SampleSpec, iter_batches
from ganserve.schema import image_filename, latent_filename

_worker_backend: Backend | None = None  # the backend of a worker process (set by _start_worker)


def spec_filename(spec: SampleSpec, index: int, fmt: str) -> str:
    """The file of the image of `spec`, number `index` of its list: seed0042.png for a seed, latent0003.png for a
    given z or w (which has no seed: it is named by its place in the list)."""
    return image_filename(spec.seed, fmt) if spec.seed is not None else latent_filename(index, fmt)


def _write_batch(backend: Backend, specs: Sequence[SampleSpec], start: int, outdir: Path, fmt: str,
                 keep: bool) -> tuple[int, np.ndarray | None]:
    pixels = backend.generate(specs)
    for i, (spec, image) in enumerate(zip(specs, pixels)):
        (outdir / spec_filename(spec, start + i, fmt)).write_bytes(encode(image, fmt))
    return len(specs), pixels if keep else None


def _start_worker(name: str, model_dir: str, device: str, options: dict, threads: int) -> None:
    global _worker_backend
    setup_cpu_inference(threads if name in TORCH_BACKENDS else None)  # ONNX Runtime sessions set their own
    _worker_backend = load_backend(model_dir, name, device, **options)


def _worker_batch(specs, start: int, outdir: Path, fmt: str, keep: bool) -> tuple[int, np.ndarray | None]:
    assert _worker_backend is not None
    return _write_batch(_worker_backend, specs, start, outdir, fmt, keep)


def default_generate_workers(backend: Backend) -> int:
    """One process per core on the CPU, one on a GPU."""
    return 1 if backend.device.type == "cuda" else cpu_cores()


def write_images(backend: Backend, specs: Sequence[SampleSpec], outdir: Path, fmt: str = "png",
                 batch_size: int = 32, workers: int = 1, keep: bool = False,
                 progress: Callable[[int], None] = lambda n: None) -> np.ndarray | None:
    """Generate `specs` with `backend` and write OUTDIR/seedNNNN.FMT for each (latentNNNN.FMT, NNNN its place in
    `specs`, for a spec with a z or w in place of a seed); with `keep` also return the pixels
    [N, H, W, C] in spec order. `progress(n)` is called as n images are done.

    With workers > 1 (and more than one batch to share) this process and workers - 1 others, which each load the same
    backend (from backend.model_dir: a model directory or the export the backend runs), take batches of at most
    `batch_size` from one queue. This process starts at once, while the others are still importing and loading, so
    their start-up is not dead time; each of the others keeps two batches queued so that it never waits for this
    one to hand it work."""
    outdir.mkdir(parents=True, exist_ok=True)
    size = max(1, min(batch_size, math.ceil(len(specs) / max(1, workers))))  # a share for every process
    batches = list(iter_batches(specs, size))
    starts = [i * size for i in range(len(batches))]
    workers = min(workers, len(batches))
    results: list[np.ndarray | None] = [None] * len(batches)

    def run_here(i: int) -> None:
        n, results[i] = _write_batch(backend, batches[i], starts[i], outdir, fmt, keep)
        progress(n)

    if workers <= 1:
        for i in range(len(batches)):
            run_here(i)
    else:
        on_torch = backend.name in TORCH_BACKENDS and backend.device.type == "cpu"
        options = {"precision": backend.precision} if backend.name in TORCH_BACKENDS else {}
        threads = cpu_threads_per_worker(workers)
        init = (backend.name, str(backend.model_dir), str(backend.device), options, threads)
        todo = deque(range(len(batches)))
        running: dict[Future, int] = {}
        if on_torch:  # this process is one of the workers
            import torch

            own_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            with ProcessPoolExecutor(workers - 1, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                                     initargs=init) as pool:
                while todo or running:
                    while todo and len(running) < 2 * (workers - 1):
                        i = todo.popleft()
                        running[pool.submit(_worker_batch, batches[i], starts[i], outdir, fmt, keep)] = i
                    if todo:
                        run_here(todo.pop())  # from the far end: the others take theirs from the front
                    else:
                        wait(running, return_when=FIRST_COMPLETED)
                    for future in [f for f in running if f.done()]:
                        i = running.pop(future)
                        n, results[i] = future.result()
                        progress(n)
        finally:
            if on_torch:
                torch.set_num_threads(own_threads)
    if not keep:
        return None
    r, c = backend.config.resolution, backend.config.img_channels
    return np.concatenate(results) if batches else np.zeros((0, r, r, c), np.uint8)
