"""How inference workers size their batches: at most their fair share of the images in the server."""

from __future__ import annotations

import ctypes
import re
from types import SimpleNamespace

import httpx
import pytest

from ganserve.serve.litserve_glue import FairShare
from ganserve.serve.process import ServerProcess


@pytest.mark.parametrize(("images", "workers", "expected"), [
    (0, 2, 1), (1, 2, 1), (2, 2, 1), (3, 2, 2), (8, 2, 4), (15, 2, 8), (32, 2, 8), (5, 1, 5), (100, 1, 8), (7, 3, 3),
])
def test_the_fair_share_is_ceil_images_over_workers_between_one_and_the_maximum(images, workers, expected):
    api = SimpleNamespace(max_batch_size=8, batch_timeout=0.005, demand=ctypes.c_int64(images), num_workers=workers)
    capped = FairShare(api)
    assert capped.max_batch_size == expected
    assert capped.batch_timeout == 0.005  # everything else is the LitAPI's own
    api.demand.value = 1000  # read afresh each time
    assert capped.max_batch_size == 8


@pytest.mark.slow
def test_a_lone_request_does_not_wait_out_the_batch_window(model_dirs, tmp_path):
    """With a 30 s window a lone image would wait 30 s for company; its share of the server is one image, so it
    starts at once. (The window is long enough that no machine is slow enough to confuse the two.)"""
    flags = ["--backend", "torch", "--device", "cpu", "--max-batch-size", "8", "--batch-timeout-ms", "30000",
             "--timeout-s", "120", "--log-level", "warning"]
    with ServerProcess([f"sg={model_dirs['stylegan']}"], *flags, log=tmp_path / "server.log") as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for seed in range(3):
                r = http.get("/generate", params={"seed": seed})
                assert r.status_code == 200 and r.headers["x-batch-size"] == "1"
            metrics = http.get("/metrics").text
    waited = float(re.search(r"ganserve_queue_seconds_sum (\S+)", metrics).group(1))
    count = float(re.search(r"ganserve_queue_seconds_count (\S+)", metrics).group(1))
    assert count == 3 and waited < 30, f"3 lone images waited {waited:.2f} s in all before their batches started"
