"""Tiny models shared by the tests: a few hundred thousand parameters, 16x16, built in milliseconds."""

from __future__ import annotations

import os
import tempfile

import httpx
import pytest
import torch

from ganserve.models import ModelConfig, build_generator
from ganserve.models.weights import save_model

# Exports that `--backend auto` makes on first use go to a cache of this test run's own (inherited by the servers and
# commands the tests start), never to the user's ~/.cache.
os.environ["GANSERVE_CACHE"] = tempfile.mkdtemp(prefix="ganserve-test-cache-")

TINY = dict(resolution=16, z_dim=32, w_dim=32, fmap_base=128, fmap_max=32, mapping_layers=2)


def tiny_config(arch: str = "stylegan", **overrides) -> ModelConfig:
    return ModelConfig(arch=arch, **{**TINY, **overrides})


def tiny_generator(arch: str = "stylegan", seed: int = 0, **overrides):
    """A generator whose noise strengths and w_avg are non-zero, as after training, so that they matter."""
    torch.manual_seed(seed)
    G = build_generator(tiny_config(arch, **overrides))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.strength"):
                p.normal_(0, 0.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
        G.estimate_w_avg(1024)
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="session", params=["stylegan", "progan"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    """Saved tiny model directories, one per architecture."""
    root = tmp_path_factory.mktemp("models")
    return {a: str(save_model(tiny_generator(a), root / a)) for a in ("stylegan", "progan")}


@pytest.fixture(scope="module")
def http(server, request):
    """An httpx client on the test module's `server` fixture (a ServerProcess, see tests/serving.py), for the module;
    its timeout is the module's HTTP_TIMEOUT_S, else 60 s. A module that wants more defines its own `http`."""
    with httpx.Client(base_url=server.url, timeout=getattr(request.module, "HTTP_TIMEOUT_S", 60)) as client:
        yield client
