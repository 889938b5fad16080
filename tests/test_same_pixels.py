"""Same seed, same pixels: an image does not depend on its batch, its neighbours, threads, processes or restarts.

In-process checks pin each layer of the promise (the convolution, the network, each CPU backend at several thread
counts); the end-to-end checks run it as a user meets it: `ganserve serve` with its default CPU workers under load
that forms device batches of every size up to the maximum, against `ganserve generate` with its defaults.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import tiny_generator
from PIL import Image
from test_stylegan2 import tiny_sg2

from ganserve.devices import default_batch_size
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import batch_styles, make_specs, prepare_batch
from ganserve.models.layers import conv2d
from ganserve.models.weights import save_model
from ganserve.multipart import MultipartParser, boundary_of
from ganserve.serve.process import ServerProcess

MAX_BATCH = default_batch_size("cpu")  # ganserve serve's default --max-batch-size on the CPU (8)
LARGE_BATCH = 32  # a larger --max-batch-size, as a user may set it
SEEDS = range(128)


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A StyleGAN (64x64, 64 channels) and a ProGAN (16x16) on which batch- and thread-dependent rounding showed in
    the uint8 pixels of a few seeds in a hundred before convolutions were pinned to one kernel, and a StyleGAN2
    (32x32, the network `ganserve import` builds)."""
    root = tmp_path_factory.mktemp("same-pixels")
    return {
        "sg": save_model(tiny_generator("stylegan", resolution=64, fmap_base=1024, fmap_max=64), root / "sg"),
        "pg": save_model(tiny_generator("progan"), root / "pg"),
        "s2": save_model(tiny_sg2(resolution=32), root / "s2"),
    }


# -- in process ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,k,size", [(64, 3, 1, 32), (32, 3, 1, 16), (13, 11, 1, 8), (7, 5, 1, 8),
                                              (64, 64, 3, 8), (32, 32, 3, 4)])
def test_conv2d_gives_each_image_the_same_bits_at_any_batch_size_and_thread_count(threads, cin, cout, k, size):
    # F.conv2d runs a 1x1 convolution (toRGB) on one kernel below 16 images with one thread and on another above,
    # and any convolution of a single image on the first; layers.conv2d always runs the same one.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, cin, size, size, generator=gen)
    w = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
    threads(1)
    alone = torch.cat([conv2d(x[i : i + 1], w, padding=k // 2) for i in range(len(x))])
    for n in (1, 2, 3, 15, 16, 17, 20):
        for t in (1, 2, 3):
            threads(t)
            together = torch.cat([conv2d(x[i : i + n], w, padding=k // 2) for i in range(0, len(x), n)])
            assert torch.equal(together, alone), f"batch {n}, {t} threads"


@pytest.mark.parametrize("name", ["sg", "pg", "s2"])
def test_synthesis_floats_do_not_depend_on_batch_size_or_threads(models, threads, name):
    backend = load_backend(models[name], "torch", "cpu")
    inputs = prepare_batch(make_specs(backend.config, list(range(24)), psi=0.7), backend.config, [])
    with torch.inference_mode():
        ws = batch_styles(backend.G.mapping, backend.G.w_avg, inputs, "cpu")
        threads(1)
        alone = torch.cat([backend.G.synthesis(ws[i : i + 1]) for i in range(len(ws))])
        for t in (1, 2, 3):
            threads(t)
            for n in (2, 7, 16, 24):
                together = torch.cat([backend.G.synthesis(ws[i : i + n]) for i in range(0, len(ws), n)])
                assert torch.equal(together, alone), f"{name}: batch {n}, {t} threads"


@pytest.mark.parametrize("name", ["sg", "pg", "s2"])
@pytest.mark.parametrize("backend_name", ["torch", "onnxruntime"])
def test_backend_images_do_not_depend_on_batch_size_neighbours_or_threads(models, threads, name, backend_name):
    threads(1)
    backend = load_backend(models[name], backend_name, "cpu")
    specs = make_specs(backend.config, list(range(40)))
    alone = np.concatenate([backend.generate(specs[i : i + 1]) for i in range(len(specs))])
    mixed = specs[::-1]  # every image among other neighbours, at another place in its batch
    for t in (1, 2):
        threads(t)
        for n in (5, 16, 17):
            assert np.array_equal(backend.generate(specs, batch_size=n), alone), f"batch {n}, {t} threads"
        assert np.array_equal(backend.generate(mixed, batch_size=16)[::-1], alone)


# -- as a user meets it ----------------------------------------------------------------------------------------
def cli_images(model: Path, outdir: Path, *flags: str) -> dict[int, np.ndarray]:
    """`ganserve generate` with its defaults (on the CPU) in a fresh process: pixels per seed."""
    cmd = [sys.executable, "-m", "ganserve.cli", "generate", "--model", str(model), "--seeds",
           f"{SEEDS[0]}-{SEEDS[-1]}", "--outdir", str(outdir), "--device", "cpu", "--quiet", *flags]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return {s: np.asarray(Image.open(outdir / f"seed{s:04d}.png")) for s in SEEDS}


def served_images(server: ServerProcess, max_batch: int = MAX_BATCH
                  ) -> tuple[dict[str, dict[int, list[np.ndarray]]], dict[str, set[int]]]:
    """Every seed of SEEDS from both models many times over: first one POST at a time of 2k seeds for k = 1 to
    max_batch (the server's --max-batch-size; the two CPU workers split each into two device batches of k), then
    GETs and POSTs of shuffled seeds from 12 clients at once (each seed twice). Returns the pixels received per model
    and seed, and the batch sizes seen per model."""
    names = [m["name"] for m in httpx.get(f"{server.url}/models").json()["models"]]
    images: dict[str, dict[int, list[np.ndarray]]] = {m: {s: [] for s in SEEDS} for m in names}
    sizes: dict[str, set[int]] = {m: set() for m in names}

    def keep(model: str, seed: int, batch_size: str, data: bytes) -> None:
        images[model][seed].append(np.asarray(Image.open(io.BytesIO(data))))
        sizes[model].add(int(batch_size))

    def post(client: httpx.Client, model: str, seeds: list[int]) -> None:
        r = client.post("/generate", json={"seeds": seeds, "model": model})
        assert r.status_code == 200, r.text
        parts = list(MultipartParser(boundary_of(r.headers["content-type"])).feed(r.content))
        assert len(parts) == len(seeds) and all("x-error" not in p.headers for p in parts)
        for p in parts:
            keep(model, int(p.headers["x-seed"]), p.headers["x-batch-size"], p.body)

    def get(client: httpx.Client, model: str, seed: int) -> None:
        r = client.get("/generate", params={"seed": seed, "model": model})
        assert r.status_code == 200, r.text
        keep(model, seed, r.headers["x-batch-size"], r.content)

    with httpx.Client(base_url=server.url, timeout=120) as client:
        for model in names:
            for k in range(1, max_batch + 1):
                for _ in range(3):  # a batch window can rarely merge or split; ask again until size k was seen
                    post(client, model, list(range(2 * k)))
                    if k in sizes[model]:
                        break
    rng = random.Random(0)
    calls = []
    for model in names:
        for _ in range(2):
            order = list(SEEDS)
            rng.shuffle(order)
            calls += [(get, model, s) for s in order[:32]]
            rest = order[32:]
            while rest:
                n = rng.randint(1, 12)
                calls.append((post, model, rest[:n]))
                rest = rest[n:]
    rng.shuffle(calls)
    with httpx.Client(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=12)) as client:
        with ThreadPoolExecutor(12) as pool:
            for f in [pool.submit(fn, client, model, arg) for fn, model, arg in calls]:
                f.result()
    return images, sizes


def assert_same_pixels(served, sizes, cli, max_batch: int = MAX_BATCH) -> None:
    assert set(served) == set(cli)
    for model in cli:
        assert sizes[model] >= set(range(1, max_batch + 1)), f"{model}: batch sizes seen {sorted(sizes[model])}"
        for seed in SEEDS:
            assert len(served[model][seed]) >= 2
            for got in served[model][seed]:
                differ = int((got != cli[model][seed]).sum())
                assert differ == 0, f"{model} seed {seed}: {differ} values differ from ganserve generate's"


@pytest.mark.slow
def test_server_defaults_and_generate_defaults_write_the_same_pixels(models, tmp_path):
    cli = {name: cli_images(d, tmp_path / name) for name, d in models.items()}
    with ServerProcess([f"{name}={d}" for name, d in models.items()], "--device", "cpu",
                       log=tmp_path / "server.log") as server:
        served, sizes = served_images(server)
    assert_same_pixels(served, sizes, cli)


@pytest.mark.slow
def test_with_an_onnx_export_server_and_generate_still_agree(models, tmp_path_factory, tmp_path):
    """With an export next to each model, `auto` picks ONNX Runtime on both sides; the promise holds there too, and
    at batches up to 32 (a --max-batch-size above the CPU default) against `generate`'s default batches of 8."""
    root = tmp_path_factory.mktemp("exported")
    exported = {}
    for name, d in models.items():
        exported[name] = save_model(load_backend(d, "torch", "cpu").G, root / name)
        subprocess.run([sys.executable, "-m", "ganserve.cli", "export", "--model", str(exported[name])],
                       check=True, capture_output=True, timeout=600)
    cli = {name: cli_images(d, tmp_path / name) for name, d in exported.items()}
    with ServerProcess([f"{name}={d}" for name, d in exported.items()], "--device", "cpu", "--max-batch-size",
                       str(LARGE_BATCH), log=tmp_path / "server.log") as server:
        listed = httpx.get(f"{server.url}/models").json()
        assert "onnxruntime" in str(listed), listed
        served, sizes = served_images(server, LARGE_BATCH)
    assert_same_pixels(served, sizes, cli, LARGE_BATCH)
