"""StyleGAN3's rotate/translate as per-image parameters: validated once with its field, a per-row input transform in
every backend (equal to setting NVlabs' input transform on the model), `ganserve generate --rotate/--translate`,
HTTP `rotate=`/`translate=`, the client and `ganserve sample`."""

from __future__ import annotations

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
from test_stylegan3 import tiny_sg3

from ganserve.client import Client, ServerError
from ganserve.errors import SpecError
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec, prepare_batch, run_eager
from ganserve.models.latents import image_transform, make_transform
from ganserve.models.weights import load_model, save_model
from ganserve.multipart import MultipartParser, boundary_of
from ganserve.serve.process import ServerProcess

SEEDS = [0, 1, 2, 3]
MOVES = [(0.0, None), (30.0, None), (0.0, "0.25,-0.1"), (-90.0, "0.1,0.1")]  # (rotate, translate)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sg3move")
    return {"sg3": save_model(tiny_sg3("t"), root / "sg3"), "sg2": save_model(tiny_sg2(), root / "sg2")}


def ganserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True, timeout=600)


def test_rotate_and_translate_are_validated_with_their_field(models):
    sg3 = load_model(models["sg3"], "cpu").config
    sg2 = load_model(models["sg2"], "cpu").config
    spec = make_spec(sg3, 1, rotate=45, translate="0.5, -0.25")
    assert (spec.rotate, spec.translate, spec.transformed) == (45.0, (0.5, -0.25), True)
    assert make_spec(sg3, 1, translate=[0, 0.1]).translate == (0.0, 0.1)
    assert not make_spec(sg3, 1, rotate=-0.0, translate=(0, 0)).transformed
    assert not make_spec(sg2, 1, rotate=0, translate="0,0").transformed  # zero is no request
    for kwargs, field in (({"rotate": float("nan")}, "rotate"), ({"rotate": 361}, "rotate"),
                          ({"rotate": "left"}, "rotate"), ({"rotate": True}, "rotate"),
                          ({"translate": "1"}, "translate"), ({"translate": "a,b"}, "translate"),
                          ({"translate": (0, float("inf"))}, "translate"), ({"translate": (0, 101)}, "translate"),
                          ({"translate": (1, 2, 3)}, "translate")):
        with pytest.raises(SpecError) as e:
            make_spec(sg3, 1, **kwargs)
        assert e.value.field == field, kwargs
    for kwargs, field in (({"rotate": 10}, "rotate"), ({"translate": "0.1,0"}, "translate")):
        with pytest.raises(SpecError, match="needs a StyleGAN3 model") as e:
            make_spec(sg2, 1, **kwargs)
        assert e.value.field == field


def test_a_rows_transform_equals_nvlabs_input_transform_in_any_batch(models):
    """Row transforms give what setting the model's transform to NVlabs' inverse make_transform gives, bit for bit,
    and each image's pixels do not depend on the other rows of its batch (moved or not)."""
    backend = load_backend(models["sg3"], "torch", "cpu")
    config = backend.config
    specs = [make_spec(config, s, rotate=r, translate=t) for s in SEEDS for r, t in MOVES]
    alone = backend.generate(specs, batch_size=1)
    for n in (3, len(specs)):
        assert np.array_equal(backend.generate(specs, batch_size=n), alone), n
    assert np.array_equal(image_transform(30, (0.1, -0.2)), np.linalg.inv(make_transform((0.1, -0.2), 30)).astype(
        np.float32))
    for k, (rotate, translate) in enumerate(MOVES):
        G = load_model(models["sg3"], "cpu")
        shift = tuple(float(v) for v in translate.split(",")) if translate else (0.0, 0.0)
        G.set_transform(rotate, shift)  # the model-wide transform, as NVlabs' gen_images.py sets it
        plain = [make_spec(config, s) for s in SEEDS]
        want = run_eager(G, prepare_batch(plain, config, [])).numpy()
        assert np.array_equal(alone[k::len(MOVES)], want), (rotate, translate)
    unmoved = alone[0::len(MOVES)]
    for k in range(1, len(MOVES)):
        assert (alone[k::len(MOVES)] != unmoved).mean() > 0.1, MOVES[k]  # every move changes the picture


@pytest.mark.slow
def test_onnx_and_compile_backends_take_the_transform(models, tmp_path):
    model = save_model(load_model(models["sg3"], "cpu"), tmp_path / "sg3")
    want_backend = load_backend(model, "torch", "cpu")
    config = want_backend.config
    specs = [make_spec(config, s, rotate=r, translate=t, psi=0.8) for s in SEEDS for r, t in MOVES]
    want = want_backend.generate(specs).astype(int)
    onnx = load_backend(model, "onnxruntime", "cpu")
    assert [i.name for i in onnx.synthesis.get_inputs()] == ["ws", "transform"]
    assert onnx.manifest["transform_input"] == "transform"
    got = onnx.generate(specs, batch_size=5)
    diff = np.abs(got.astype(int) - want)
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1
    assert np.array_equal(onnx.generate(specs, batch_size=1), got)  # batch invariant on ONNX Runtime too
    compiled = load_backend(model, "compile", "cpu")
    diff = np.abs(compiled.generate(specs, batch_size=6).astype(int) - want)
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1


def cli_images(model: Path, outdir: Path, *flags: str) -> dict[int, np.ndarray]:
    r = ganserve("generate", "--model", str(model), "--seeds", f"{SEEDS[0]}-{SEEDS[-1]}", *flags, "--outdir",
                 str(outdir), "--device", "cpu", "--backend", "torch", "--quiet")
    assert r.returncode == 0, r.stderr
    return {s: np.asarray(Image.open(outdir / f"seed{s:04d}.png")) for s in SEEDS}


@pytest.mark.slow
def test_served_rotate_translate_equal_generate_and_bad_values_are_422(models, tmp_path):
    cli = cli_images(models["sg3"], tmp_path / "moved", "--rotate", "30", "--translate=-0.25,0.1")
    still = cli_images(models["sg3"], tmp_path / "still")
    assert np.mean([(cli[s] != still[s]).mean() for s in SEEDS]) > 0.1  # the flags reach the network
    r = ganserve("generate", "--model", str(models["sg2"]), "--seeds", "0", "--rotate", "10", "--outdir",
                 str(tmp_path / "no"), "--device", "cpu", "--backend", "torch")
    assert r.returncode == 2 and "rotate needs a StyleGAN3 model" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "no").exists() or not any((tmp_path / "no").iterdir())

    with ServerProcess([f"sg3={models['sg3']}", f"sg2={models['sg2']}"], "--device", "cpu", "--backend", "torch",
                       log=tmp_path / "server.log") as server:
        moved = {"model": "sg3", "rotate": 30, "translate": "-0.25,0.1"}

        def get(client, seed, params):
            r = client.get("/generate", params={"seed": seed, **params})
            assert r.status_code == 200, r.text
            return [(params is moved, seed, np.asarray(Image.open(io.BytesIO(r.content))))]

        def post(client, seeds, params):
            body = {**params, "translate": [-0.25, 0.1]} if params is moved else params
            r = client.post("/generate", json={"seeds": seeds, **body})
            assert r.status_code == 200, r.text
            parts = list(MultipartParser(boundary_of(r.headers["content-type"])).feed(r.content))
            return [(params is moved, int(p.headers["x-seed"]), np.asarray(Image.open(io.BytesIO(p.body))))
                    for p in parts]

        with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(8) as pool:
            plain = {"model": "sg3"}
            futures = [pool.submit(get, client, s, p) for s in SEEDS for p in (moved, plain)]  # rows share batches
            futures += [pool.submit(post, client, SEEDS, p) for p in (moved, plain, moved)]
            got = [item for f in futures for item in f.result()]
            assert len(got) == 2 * len(SEEDS) + 3 * len(SEEDS)
            for is_moved, seed, image in got:
                assert np.array_equal(image, (cli if is_moved else still)[seed]), (is_moved, seed)

            for params, field, why in (({"model": "sg3", "rotate": 400}, "rotate", "less than or equal"),
                                       ({"model": "sg3", "translate": "0.1"}, "translate", "two numbers"),
                                       ({"model": "sg3", "translate": "0,500"}, "translate", "[-100, 100]"),
                                       ({"model": "sg2", "rotate": 5}, "rotate", "needs a StyleGAN3"),
                                       ({"model": "sg2", "translate": "0.1,0"}, "translate", "needs a StyleGAN3")):
                r = client.get("/generate", params={"seed": 1, **params})
                assert r.status_code == 422 and r.json()["field"] == field and why in r.json()["detail"], r.text
                r = client.post("/generate", json={"seeds": [1, 2], **params})
                assert r.status_code == 422 and r.json()["field"] == field and why in r.json()["detail"], r.text
            r = client.post("/generate", json={"seeds": [1], "model": "sg3", "translate": [0.1]})
            assert r.status_code == 422 and r.json()["field"] == "translate", r.text
            r = client.get("/generate", params={"seed": 1, "model": "sg3", "rotate": "nan"})
            assert r.status_code == 422 and r.json()["field"] == "rotate", r.text

        with Client(server.url) as c:
            one = c.generate(2, model="sg3", rotate=30, translate=(-0.25, 0.1))
            assert np.array_equal(np.asarray(one), cli[2])
            many = dict(c.generate_many(SEEDS, model="sg3", rotate=30, translate=(-0.25, 0.1), concurrency=2))
            assert all(np.array_equal(np.asarray(many[s]), cli[s]) for s in SEEDS)
            with pytest.raises(ServerError) as e:
                c.generate_bytes(1, model="sg2", rotate=10)
            assert e.value.status == 422 and e.value.field == "rotate"
        r = ganserve("sample", "--url", server.url, "--seeds", f"{SEEDS[0]}-{SEEDS[-1]}", "--model", "sg3",
                     "--rotate", "30", "--translate=-0.25,0.1", "--outdir", str(tmp_path / "sampled"), "--quiet")
        assert r.returncode == 0, r.stderr
        for s in SEEDS:
            assert np.array_equal(np.asarray(Image.open(tmp_path / "sampled" / f"seed{s:04d}.png")), cli[s])
