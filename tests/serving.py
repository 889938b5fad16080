"""Helpers shared by the tests that run a real server (test_serve, test_serve_contract, test_serve_failures,
test_imported_features): a module's server (`served`), an HTTP client on it, pixels of a response, the torch
backend's reference images, the parts of a POST /generate response, and the larger saved StyleGAN models that make
generation slow. The module-scoped `http` fixture on a module's `server` is in conftest.py."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from ganserve.inference.sampling import make_spec
from ganserve.models import ModelConfig, build_generator
from ganserve.models.weights import save_model
from ganserve.multipart import MultipartParser, Part, boundary_of
from ganserve.serve.process import ServerProcess


def torch_blocked_env(tmp_path) -> dict[str, str]:
    """This process's environment with torch made unimportable (a package named torch that raises ImportError, first
    on PYTHONPATH): what runs in it, and every process it starts, can be shown not to need torch."""
    blocker = Path(tmp_path) / "torch-blocker"
    (blocker / "torch").mkdir(parents=True, exist_ok=True)
    (blocker / "torch" / "__init__.py").write_text('raise ImportError("torch is blocked by this test")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}


def saved_stylegan(path, resolution: int, fmap_base: int, fmap_max: int) -> str:
    """A StyleGAN (z and w of 32, two mapping layers) with weights from seed 0, saved to `path`: its directory."""
    torch.manual_seed(0)
    config = ModelConfig(arch="stylegan", resolution=resolution, z_dim=32, w_dim=32, fmap_base=fmap_base,
                         fmap_max=fmap_max, mapping_layers=2)
    return str(save_model(build_generator(config).eval(), path))


def served(models: list[str], flags: list[str], log_dir) -> Iterator[ServerProcess]:
    """A module's `server` fixture: `yield from served(...)` runs ServerProcess(models, *flags) for the module, with
    its log in log_dir/server.log."""
    with ServerProcess(models, *flags, log=log_dir / "server.log") as server:
        yield server


@contextmanager
def http_client(server: ServerProcess, timeout: float) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=timeout) as client:
        yield client


def generated(backend, seeds, **params) -> list[np.ndarray]:
    """Pixels of the torch backend in this process for `seeds`: what `ganserve generate` writes."""
    return backend.generate([make_spec(backend.config, s, **params) for s in seeds])


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def get_image(http: httpx.Client, png: bool = False, **params) -> np.ndarray:
    """Pixels of GET /generate, which must answer 200 (and with `png`, a PNG said to be one)."""
    r = http.get("/generate", params=params)
    assert r.status_code == 200, r.text
    if png:
        assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG\r\n\x1a\n")
    return pixels(r.content)


def stream_parts(response: httpx.Response) -> Iterator[Part]:
    """The parts of a streamed multipart response as each arrives; after the last, the closing boundary must have
    come (the stream ended as designed, not cut off)."""
    parser = MultipartParser(boundary_of(response.headers["content-type"]))
    for chunk in response.iter_bytes():
        yield from parser.feed(chunk)
    parser.close()


def parts_of(response: httpx.Response) -> list[Part]:
    """The parts of a multipart response read whole, which must end with its closing boundary."""
    parser = MultipartParser(boundary_of(response.headers["content-type"]))
    parts = list(parser.feed(response.content))
    parser.close()
    return parts


def images_by_seed(parts: list[Part]) -> dict[int, np.ndarray]:
    return {int(p.headers["x-seed"]): pixels(p.body) for p in parts}
