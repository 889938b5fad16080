"""How one LitServe batch becomes device batches: images grouped by model, split at the backend's batch limit.

Owns ImageResult, what an inference worker sends back for each image (raw pixels; encoding happens elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ganserve.inference.backend import Backend
from ganserve.inference.sampling import SampleSpec, iter_batches

# What the HTTP side queues for one image: (model name, validated spec).
ImageJob = tuple[str, SampleSpec]


@dataclass
class ImageResult:
    pixels: np.ndarray  # [H, W, C] uint8
    batch_size: int  # images in the device batch it rode in
    first_in_batch: bool  # exactly one image per device batch says so (for per-batch metrics)
    started: float  # time.monotonic() when its batch started, comparable across processes on one host
    generated_at: float  # time.time() when its batch's pixels reached the host
    device_seconds: float  # how long its batch took on the device


def group_by_model(jobs: Sequence[ImageJob]) -> dict[str, list[int]]:
    """Indices of `jobs` per model, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, (model, _) in enumerate(jobs):
        groups.setdefault(model, []).append(i)
    return groups


def run_jobs(backends: Mapping[str, Backend], jobs: Sequence[ImageJob]) -> list[ImageResult]:
    """One result per job, in order. Each model's images run together, at most backend.max_batch_size at a time."""
    results: list[ImageResult | None] = [None] * len(jobs)
    for model, indices in group_by_model(jobs).items():
        backend = backends[model]
        for chunk in iter_batches(indices, backend.max_batch_size or len(indices)):
            started = time.monotonic()
            pixels = backend.run(backend.prepare([jobs[i][1] for i in chunk])).cpu().numpy()
            elapsed = time.monotonic() - started
            now = time.time()
            for k, i in enumerate(chunk):
                results[i] = ImageResult(pixels[k], len(chunk), k == 0, started, now, elapsed)
    return results  # type: ignore[return-value]
