"""How one LitServe batch becomes device batches: images grouped by model, split at the backend's batch limit.

Owns ImageResult, what an inference worker sends back for each image (raw pixels; encoding happens elsewhere), and
LatentResult, what it sends back for a request of ws (GET /latents, an interpolation's ends).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ganserve.inference.backend import Backend
from ganserve.inference.sampling import SampleSpec, iter_batches

# What the HTTP side queues for one image: (model name, validated spec); for the ws the image would be made from
# instead of the image: (model name, validated spec, WS).
ImageJob = tuple[str, SampleSpec]
WS = "ws"


@dataclass
class ImageResult:
    pixels: np.ndarray  # [H, W, C] uint8
    batch_size: int  # images in the device batch it rode in
    first_in_batch: bool  # exactly one image per device batch says so (for per-batch metrics)
    started: float  # time.monotonic() when its batch started, comparable across processes on one host
    generated_at: float  # time.time() when its batch's pixels reached the host
    device_seconds: float  # how long its batch took on the device


@dataclass
class LatentResult:
    ws: np.ndarray  # [num_ws, w_dim] float32: what the synthesis network would receive for the spec
    batch_size: int
    first_in_batch: bool
    started: float
    generated_at: float
    device_seconds: float


def group_by_model(jobs: Sequence[tuple]) -> dict[tuple[str, bool], list[int]]:
    """Indices of `jobs` per (model, wants ws), in order of first appearance."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((job[0], job[2:] == (WS,)), []).append(i)
    return groups


def run_jobs(backends: Mapping[str, Backend], jobs: Sequence[tuple]) -> list[ImageResult | LatentResult]:
    """One result per job, in order. Each model's images run together, at most backend.max_batch_size at a time,
    and so do its requests for ws."""
    results: list[ImageResult | LatentResult | None] = [None] * len(jobs)
    for (model, want_ws), indices in group_by_model(jobs).items():
        backend = backends[model]
        for chunk in iter_batches(indices, backend.max_batch_size or len(indices)):
            started = time.monotonic()
            inputs = backend.prepare([jobs[i][1] for i in chunk])
            out = backend.styles_host(inputs) if want_ws else backend.run_host(inputs)
            elapsed = time.monotonic() - started
            now = time.time()
            kind = LatentResult if want_ws else ImageResult
            for k, i in enumerate(chunk):
                results[i] = kind(out[k], len(chunk), k == 0, started, now, elapsed)
    return results  # type: ignore[return-value]
