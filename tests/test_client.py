"""ganserve.client (Client, AsyncClient) and `ganserve sample` against a real server; the multipart reader alone."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ganserve.client import AsyncClient, Client, ServerError
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec
from ganserve.multipart import MultipartParser, closing, part
from ganserve.serve.process import ServerProcess


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    flags = ["--backend", "torch", "--device", "cpu", "--max-batch-size", "8", "--log-level", "warning"]
    with ServerProcess([f"faces={model_dirs['stylegan']}"], *flags, log=tmp_path_factory.mktemp("c") / "s.log") as s:
        yield s


@pytest.fixture(scope="module")
def expected(model_dirs):
    backend = load_backend(model_dirs["stylegan"], "torch", "cpu")

    def images(seeds, **params):
        return dict(zip(seeds, backend.generate([make_spec(backend.config, s, **params) for s in seeds])))

    return images


@pytest.mark.slow
def test_client_generate_and_generate_many(server, expected):
    with Client(server.url) as client:
        image = client.generate(11, psi=0.6)
        assert isinstance(image, Image.Image) and image.size == (16, 16)
        assert np.array_equal(np.asarray(image), expected([11], psi=0.6)[11])
        assert client.generate_bytes(11, psi=0.6).startswith(b"\x89PNG")
        assert client.generate_bytes(11, format="jpeg").startswith(b"\xff\xd8")
        got = dict(client.generate_many("0-29", concurrency=3, psi=0.6))
        assert sorted(got) == list(range(30))
        want = expected(list(range(30)), psi=0.6)
        assert all(np.array_equal(np.asarray(got[s]), want[s]) for s in got)
        assert [s for s, _ in client.generate_many_bytes([5])] == [5]
        assert client.models()["default"] == "faces"


@pytest.mark.slow
def test_client_errors_carry_the_servers_message(server):
    with Client(server.url) as client:
        with pytest.raises(ServerError) as e:
            client.generate(1, psi=5)
        assert e.value.status == 422 and e.value.field == "psi" and "psi" in str(e.value)
        with pytest.raises(ServerError) as e:
            client.generate(1, model="nope")
        assert e.value.status == 404 and "nope" in e.value.detail
        with pytest.raises(ServerError) as e:
            list(client.generate_many([1, 2], mix_layers="99", mix_seed=3))
        assert e.value.status == 422 and e.value.field == "mix_layers"


@pytest.mark.slow
def test_async_client(server, expected):
    async def run():
        async with AsyncClient(server.url) as client:
            one = await client.generate(3)
            many = {s: im async for s, im in client.generate_many(range(40, 60), concurrency=4)}
            with pytest.raises(ServerError) as e:
                await client.generate_bytes(1, psi=float("nan"))
            return one, many, e.value

    one, many, error = asyncio.run(run())
    assert np.array_equal(np.asarray(one), expected([3])[3])
    want = expected(list(range(40, 60)))
    assert sorted(many) == list(range(40, 60)) and all(np.array_equal(np.asarray(many[s]), want[s]) for s in many)
    assert error.status == 422 and error.field == "psi"


@pytest.mark.slow
def test_sample_command_writes_every_seed(server, expected, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ganserve.cli", "sample", "--url", server.url, "--seeds", "0-19", "--outdir", str(out),
         "--concurrency", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "20/20" in proc.stderr and "wrote 20 images" in proc.stdout
    want = expected(list(range(20)))
    for s in range(20):
        assert np.array_equal(np.asarray(Image.open(out / f"seed{s:04d}.png")), want[s])
    bad = subprocess.run([sys.executable, "-m", "ganserve.cli", "sample", "--url", server.url, "--seeds", "0-1",
                          "--outdir", str(out), "--psi", "9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "psi" in bad.stderr and "Traceback" not in bad.stderr


def test_multipart_reader_handles_any_chunking_and_detects_a_cut_stream():
    stream = part("b0", {"X-Seed": "1"}, b"\r\n--b0\r\n") + part("b0", {"X-Seed": "2"}, b"") + closing("b0")
    for size in (1, 3, 7, len(stream)):
        parser = MultipartParser("b0")
        parts = [p for i in range(0, len(stream), size) for p in parser.feed(stream[i : i + size])]
        parser.close()
        assert [(p.headers["x-seed"], p.body) for p in parts] == [("1", b"\r\n--b0\r\n"), ("2", b"")]
    parser = MultipartParser("b0")
    list(parser.feed(stream[:-12]))
    with pytest.raises(ValueError, match="ended early"):
        parser.close()


def test_the_client_imports_neither_torch_nor_litserve_nor_the_server():
    check = ("import ganserve.client, sys; bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'litserve') "
             "or m.startswith('ganserve.serve')]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
