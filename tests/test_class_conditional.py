"""Class-conditional StyleGAN2 models end to end: `class` validated once, one-hot c through every backend's mapping,
`ganserve generate --class`, HTTP `class=`, the client and `ganserve sample --class`."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_stylegan2 import tiny_sg2

from ganserve.client import AsyncClient, Client, ServerError
from ganserve.errors import SpecError
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import SampleSpec, make_spec, make_specs
from ganserve.models.weights import save_model
from ganserve.multipart import MultipartParser, boundary_of
from ganserve.serve.process import ServerProcess

C_DIM = 4
SEEDS = list(range(6))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cond")
    return {"cond": save_model(tiny_sg2(c_dim=C_DIM), root / "cond"), "plain": save_model(tiny_sg2(), root / "plain")}


def ganserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True, timeout=600)


def test_class_is_validated_once_with_its_field(models):
    cond = load_backend(models["cond"], "torch", "cpu").config
    plain = load_backend(models["plain"], "torch", "cpu").config
    assert make_spec(cond, 1, class_idx=3).class_idx == 3
    assert make_spec(cond, 1, class_idx=np.int64(2)).class_idx == 2
    assert make_spec(plain, 1).class_idx is None
    for config, value in ((cond, None), (cond, 4), (cond, -1), (cond, True), (cond, 1.5), (plain, 0)):
        with pytest.raises(SpecError) as e:
            make_spec(config, 1, class_idx=value)
        assert e.value.field == "class", value
    assert "class-conditional (4 classes)" in str(pytest.raises(SpecError, make_spec, cond, 1).value)
    with pytest.raises(SpecError, match="class"):  # a spec built by hand still cannot reach the network unlabelled
        load_backend(models["cond"], "torch", "cpu").generate([SampleSpec(seed=1)])


def test_classes_differ_and_a_class_gives_the_same_pixels_in_any_batch(models):
    backend = load_backend(models["cond"], "torch", "cpu")
    config = backend.config
    by_class = {k: backend.generate(make_specs(config, SEEDS, class_idx=k, psi=0.7), batch_size=1)
                for k in range(C_DIM)}
    for k in range(1, C_DIM):
        assert (by_class[k] != by_class[0]).mean() > 0.1, f"class {k} looks like class 0"
    # every batch size, and batches mixing classes, noise modes and style mixing
    specs = [make_spec(config, s, class_idx=k, psi=0.7) for s in SEEDS for k in range(C_DIM)]
    want = np.stack([by_class[k][i] for i in range(len(SEEDS)) for k in range(C_DIM)])
    for n in (2, 5, len(specs)):
        assert np.array_equal(backend.generate(specs, batch_size=n), want), n
    crowd = [make_spec(config, 9, class_idx=1, noise="random"), make_spec(config, 8, class_idx=2, mix_seed=3)]
    mixed = backend.generate(crowd + specs[:7] + crowd, batch_size=16)
    assert np.array_equal(mixed[2:9], want[:7])
    assert np.array_equal(mixed[:2], mixed[9:])
    alone = backend.generate(crowd[1:], batch_size=1)
    assert np.array_equal(mixed[1:2], alone)
    # the mix seed's styles come from the same class: mixing all layers gives the mix seed's image of that class
    full = backend.generate([make_spec(config, 0, class_idx=2, mix_seed=5, mix_layers="all", psi=0.7)])
    assert np.array_equal(full[0], by_class[2][5])


@pytest.mark.slow
def test_onnx_export_takes_the_class_and_agrees_with_torch(models, tmp_path):
    model = save_model(load_backend(models["cond"], "torch", "cpu").G, tmp_path / "cond")
    r = ganserve("export", "--model", str(model), "--format", "onnx")
    assert r.returncode == 0, r.stderr
    onnx = load_backend(model, "onnxruntime", "cpu")
    assert [i.name for i in onnx.mapping.get_inputs()] == ["z", "c"]
    assert onnx.manifest["c_dim"] == C_DIM and onnx.manifest["mapping_inputs"] == ["z", "c"]
    torch_backend = load_backend(model, "torch", "cpu")
    specs = [make_spec(onnx.config, s, class_idx=s % C_DIM, psi=0.7) for s in range(12)]
    specs += [make_spec(onnx.config, 3, class_idx=1, mix_seed=4), make_spec(onnx.config, 5, class_idx=3,
                                                                           noise="random")]
    got = onnx.generate(specs, batch_size=5).astype(int)
    want = torch_backend.generate(specs).astype(int)
    diff = np.abs(got - want)
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1
    assert np.array_equal(onnx.generate(specs, batch_size=1), got)  # batch invariant on ONNX Runtime too


@pytest.mark.slow
def test_compile_backend_takes_the_class(models):
    torch_backend = load_backend(models["cond"], "torch", "cpu")
    compiled = load_backend(models["cond"], "compile", "cpu")
    config = torch_backend.config
    specs = [make_spec(config, s, class_idx=s % C_DIM, psi=0.7) for s in range(5)]
    specs.append(make_spec(config, 1, class_idx=2, mix_seed=3, noise="random"))
    want = torch_backend.generate(specs).astype(int)
    for n in (1, 4):  # a batch of one runs padded to two rows; 4 + 2 is a batch size of its own
        diff = np.abs(compiled.generate(specs, batch_size=n).astype(int) - want)
        assert (diff == 0).mean() >= 0.999 and diff.max() <= 1, n


def cli_images(model: Path, outdir: Path, class_idx: int) -> dict[int, np.ndarray]:
    r = ganserve("generate", "--model", str(model), "--seeds", f"{SEEDS[0]}-{SEEDS[-1]}", "--class", str(class_idx),
                 "--outdir", str(outdir), "--device", "cpu", "--backend", "torch", "--quiet", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    return {s: np.asarray(Image.open(outdir / f"seed{s:04d}.png")) for s in SEEDS}


@pytest.mark.slow
def test_served_get_and_post_equal_generate_and_bad_classes_are_422(models, tmp_path):
    cli = {k: cli_images(models["cond"], tmp_path / f"cli{k}", k) for k in (0, 3)}
    assert any((cli[0][s] != cli[3][s]).any() for s in SEEDS)
    r = ganserve("generate", "--model", str(models["cond"]), "--seeds", "0", "--outdir", str(tmp_path / "no"),
                 "--device", "cpu", "--backend", "torch")
    assert r.returncode == 2 and "give a class in [0, 3]" in r.stderr.strip().splitlines()[-1]
    r = ganserve("generate", "--model", str(models["plain"]), "--seeds", "0", "--class", "1", "--outdir",
                 str(tmp_path / "no"), "--device", "cpu", "--backend", "torch")
    assert r.returncode == 2 and "not class-conditional" in r.stderr.strip().splitlines()[-1]

    with ServerProcess([f"cond={models['cond']}", f"plain={models['plain']}"], "--device", "cpu", "--backend",
                       "torch", "--workers-per-device", "2", log=tmp_path / "server.log") as server:
        listed = {m["name"]: m for m in httpx.get(f"{server.url}/models").json()["models"]}
        assert listed["cond"]["c_dim"] == C_DIM and listed["plain"]["c_dim"] == 0
        schema = httpx.get(f"{server.url}/openapi.json").json()
        get_params = {p["name"] for p in schema["paths"]["/generate"]["get"]["parameters"]}
        assert "class" in get_params and "class_idx" not in get_params
        assert "class" in str(schema["components"]["schemas"]["GenerateBody"]["properties"])

        def get(client, seed, k):
            r = client.get("/generate", params={"seed": seed, "class": k, "model": "cond"})
            assert r.status_code == 200, r.text
            return k, seed, np.asarray(Image.open(io.BytesIO(r.content)))

        def post(client, seeds, k):
            r = client.post("/generate", json={"seeds": seeds, "class": k, "model": "cond"})
            assert r.status_code == 200, r.text
            parts = list(MultipartParser(boundary_of(r.headers["content-type"])).feed(r.content))
            return [(k, int(p.headers["x-seed"]), np.asarray(Image.open(io.BytesIO(p.body)))) for p in parts]

        with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(get, client, s, k) for s in SEEDS for k in (0, 3)]  # classes share batches
            futures += [pool.submit(post, client, SEEDS, k) for k in (0, 3, 3, 0)]
            got = []
            for f in futures:
                got += f.result() if isinstance(f.result(), list) else [f.result()]
            assert len(got) == 2 * len(SEEDS) + 4 * len(SEEDS)
            for k, seed, image in got:
                assert np.array_equal(image, cli[k][seed]), (k, seed)

            for model, k, why in (("cond", None, "give a class"), ("cond", 4, "[0, 3]"),
                                  ("cond", -1, "greater than or equal"), ("cond", "x", "integer"),
                                  ("plain", 0, "not class-conditional")):
                params = {"model": model, **({} if k is None else {"class": k})}
                r = client.get("/generate", params={"seed": 1, **params})
                assert r.status_code == 422 and r.json()["field"] == "class" and why in r.json()["detail"], r.text
                r = client.post("/generate", json={"seeds": [1, 2], **params})
                assert r.status_code == 422 and r.json()["field"] == "class" and why in r.json()["detail"], r.text
            r = client.post("/generate", json={"seeds": [1], "model": "cond", "class_idx": 1})
            assert r.status_code == 422 and r.json()["field"] == "class_idx", r.text

            # latents: the class goes into z's mapping and is held in w; frames of a walk keep it
            latents = client.get("/latents", params={"seed": 2, "class": 3, "model": "cond"}).json()
            for body in ({"w": [latents["w"]]}, {"z": [latents["z"]], "class": 3}):
                r = client.post("/generate", json={**body, "model": "cond"})
                (part,) = MultipartParser(boundary_of(r.headers["content-type"])).feed(r.content)
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(part.body))), cli[3][2]), list(body)
            r = client.post("/generate", json={"w": [latents["w"]], "class": 3, "model": "cond"})
            assert r.status_code == 422 and r.json()["field"] == "class", r.text
            r = client.post("/generate", json={"z": [latents["z"]], "model": "cond"})
            assert r.status_code == 422 and r.json()["field"] == "class", r.text
            r = client.get("/interpolate", params={"seed": 2, "to_seed": 5, "steps": 4, "class": 3, "model": "cond"})
            parts = list(MultipartParser(boundary_of(r.headers["content-type"])).feed(r.content))
            ends = [np.asarray(Image.open(io.BytesIO(parts[i].body))) for i in (0, -1)]
            assert np.array_equal(ends[0], cli[3][2]) and np.array_equal(ends[1], cli[3][5])

        # the Python client, blocking and async, and `ganserve sample --class`
        with Client(server.url) as c:
            assert np.array_equal(np.asarray(c.generate(2, model="cond", class_idx=3)), cli[3][2])
            many = dict(c.generate_many(SEEDS, model="cond", class_idx=0, concurrency=2))
            assert all(np.array_equal(np.asarray(many[s]), cli[0][s]) for s in SEEDS)
            with pytest.raises(ServerError) as e:
                c.generate_bytes(1, model="cond", class_idx=9)
            assert e.value.status == 422 and e.value.field == "class"

        async def use_async():
            async with AsyncClient(server.url) as c:
                one = await c.generate(4, model="cond", class_idx=0)
                many = {s: png async for s, png in c.generate_many_bytes([1, 5], model="cond", class_idx=3)}
                return one, many

        one, many = asyncio.run(use_async())
        assert np.array_equal(np.asarray(one), cli[0][4])
        assert all(np.array_equal(np.asarray(Image.open(io.BytesIO(many[s]))), cli[3][s]) for s in (1, 5))
        r = ganserve("sample", "--url", server.url, "--seeds", "0-5", "--model", "cond", "--class", "3",
                     "--outdir", str(tmp_path / "sampled"), "--quiet")
        assert r.returncode == 0, r.stderr
        for s in SEEDS:
            assert np.array_equal(np.asarray(Image.open(tmp_path / "sampled" / f"seed{s:04d}.png")), cli[3][s])
