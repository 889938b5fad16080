"""GET /latents, POST /generate from z or w, and GET /interpolate, on every served architecture, against a server
with its default configuration (on the CPU: ONNX Runtime, exported on first use, one worker per core) under load
that forms real batches: a seed's image, the image of its z and the image of the w that /latents returned are the
same bit for bit, and so are an interpolation's ends."""

from __future__ import annotations

import io
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import tiny_generator
from PIL import Image
from serving import get_image, parts_of, pixels
from test_stylegan2 import tiny_sg2
from test_stylegan3 import tiny_sg3

from ganserve.models.weights import save_model
from ganserve.serve.process import ServerProcess

pytestmark = pytest.mark.slow
HTTP_TIMEOUT_S = 120
MAX_SEEDS = 48
SEEDS = list(range(24))
# parameters that change the ws (truncation, mixing) where the model has a w space
PARAMS = {"pg": {"psi": 0.7}, "sg": {"psi": 0.7, "mix_seed": 5}, "s2": {"psi": 0.6, "truncation_cutoff": 3},
          "s3": {"psi": 0.8, "mix_seed": 9, "mix_layers": "0-2"}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("latents")
    return {
        "pg": str(save_model(tiny_generator("progan"), root / "pg")),
        "sg": str(save_model(tiny_generator("stylegan"), root / "sg")),
        "s2": str(save_model(tiny_sg2(), root / "s2")),
        "s3": str(save_model(tiny_sg3("r"), root / "s3")),
    }


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    flags = ["--device", "cpu", "--max-seeds", str(MAX_SEEDS), "--max-body-bytes", "100000"]
    with ServerProcess([f"{name}={d}" for name, d in models.items()], *flags, log=log) as s:
        yield s


@pytest.fixture(scope="module")
def configs(http) -> dict[str, dict]:
    return {m["name"]: m for m in http.get("/models").json()["models"]}


def post(http: httpx.Client, body: dict) -> list:
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return parts_of(r)


def error(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    return body["detail"]


def test_the_server_runs_its_default_backend(configs):
    assert {m["backend"] for m in configs.values()} == {"onnxruntime"}


@pytest.mark.parametrize("model", PARAMS)
def test_latents_round_trip_bit_for_bit_in_batches(http, configs, model):
    """/latents of every seed, then POST z and POST w in chunks of random sizes from several threads at once (so
    they ride in batches of many sizes with each other): every image equals the seed's GET /generate image."""
    params = {"model": model, **PARAMS[model]}
    config = configs[model]
    with ThreadPoolExecutor(8) as pool:
        latents = list(pool.map(lambda s: http.get("/latents", params={"seed": s, **params}).json(), SEEDS))
        expected = list(pool.map(lambda s: get_image(http, seed=s, **params), SEEDS))
    for seed, got in zip(SEEDS, latents):
        assert got["seed"] == seed and got["model"] == model
        assert np.array_equal(np.float32(got["z"]), np.random.RandomState(seed).randn(len(got["z"])).astype(np.float32))
        if config["supports_mixing"]:
            assert np.asarray(got["w"]).shape == (config["num_ws"], len(got["w"][0]))
        else:
            assert got["w"] is None  # ProGAN has no w space
    rng = random.Random(model)
    bodies, order, start = [], [], 0
    while start < len(SEEDS):
        n = rng.randint(1, 7)
        chunk = list(range(start, min(start + n, len(SEEDS))))
        start += n
        bodies.append({"z": [latents[i]["z"] for i in chunk], **params})
        order.append(chunk)
        if config["supports_mixing"]:
            bodies.append({"w": [latents[i]["w"] for i in chunk], "model": model})
            order.append(chunk)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: post(http, body), bodies))
    sizes = set()
    for body, chunk, parts in zip(bodies, order, answers):
        kind = "z" if "z" in body else "w"
        assert len(parts) == len(chunk)
        for part in parts:
            i = chunk[int(part.headers["x-index"])]
            assert part.headers["x-latent"] == kind and "x-seed" not in part.headers
            sizes.add(int(part.headers["x-batch-size"]))
            differ = int((pixels(part.body) != expected[i]).sum())
            assert differ == 0, f"{model} seed {SEEDS[i]} from {kind}: {differ} values differ"
    assert max(sizes) > 1, f"no batch formed: {sizes}"


def test_a_single_w_vector_is_used_for_every_layer(http, configs):
    """Seed 3's ws with seed 8's on the coarse layers: their first layer is seed 8's w, which alone makes seed 8's
    image; a list may mix both forms."""
    latents = http.get("/latents", params={"seed": 3, "mix_seed": 8, "model": "sg"}).json()
    w = np.asarray(latents["w"], np.float32)
    layered = [np.repeat(w[:1], len(w), axis=0).tolist(), w[0].tolist()]
    a, b = (pixels(p.body) for p in post(http, {"w": layered, "model": "sg"}))
    assert np.array_equal(a, b)
    assert np.array_equal(a, get_image(http, seed=8, model="sg"))


def test_stylegan3_w_images_can_be_rotated(http):
    w = http.get("/latents", params={"seed": 4, "model": "s3"}).json()["w"]
    (part,) = post(http, {"w": [w], "model": "s3", "rotate": 30, "translate": [0.1, 0]})
    assert np.array_equal(pixels(part.body), get_image(http, seed=4, model="s3", rotate=30, translate="0.1,0"))


@pytest.mark.parametrize("model,space", [("pg", None), ("pg", "z"), ("sg", None), ("sg", "z"), ("s2", "w"),
                                         ("s3", None)])
def test_interpolation_frames_come_in_order_between_the_two_images(http, model, space):
    params = {"model": model, **PARAMS[model]}
    query = {"seed": 11, "to_seed": 12, "steps": 7, **params, **({"space": space} if space else {})}
    r = http.get("/interpolate", params=query)
    assert r.status_code == 200, r.text
    assert r.headers["x-space"] == (space or ("z" if model == "pg" else "w"))
    parts = parts_of(r)
    assert [int(p.headers["x-index"]) for p in parts] == list(range(7))
    frames = [pixels(p.body) for p in parts]
    assert np.array_equal(frames[0], get_image(http, seed=11, **params))
    assert np.array_equal(frames[-1], get_image(http, seed=12, **params))
    assert len({f.tobytes() for f in frames}) >= 4  # it moves (a tiny random network may hold still for a step)


@pytest.mark.parametrize("fmt,mime", [("gif", "image/gif"), ("webp", "image/webp")])
def test_interpolation_as_one_animated_file(http, fmt, mime):
    r = http.get("/interpolate", params={"seed": 1, "to_seed": 2, "steps": 5, "format": fmt, "fps": 10,
                                         "model": "sg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == mime and r.headers["x-count"] == "5"
    animation = Image.open(io.BytesIO(r.content))
    assert animation.n_frames == 5 and animation.info.get("loop") == 0
    animation.seek(0)
    first = np.asarray(animation.convert("RGB"))
    if fmt == "gif":  # a palette of 256 colours per frame: close to the image, not equal
        assert np.abs(first.astype(int) - get_image(http, seed=1, model="sg")).mean() < 12
    assert first.shape == (16, 16, 3)


def images_made(http) -> float:
    text = http.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ganserve_images_total{"))


def test_bad_latents_are_refused_naming_the_field_and_nothing_is_queued(http, configs):
    before = images_made(http)
    z_dim = len(http.get("/latents", params={"seed": 0, "model": "sg"}).json()["z"])
    w = http.get("/latents", params={"seed": 0, "model": "sg"}).json()["w"]
    assert "shape" in error(http.post("/generate", json={"z": [[0.5] * (z_dim + 1)], "model": "sg"}), 422, "z")
    assert "a list of z vectors" in error(http.post("/generate", json={"z": [0.5] * z_dim, "model": "sg"}), 422, "z")
    assert "shape" in error(http.post("/generate", json={"w": [w[:-1]], "model": "sg"}), 422, "w")
    assert "w[1]" in error(http.post("/generate", json={"w": [w, w[0][:-1]], "model": "sg"}), 422, "w")
    raw = json.dumps({"z": [[0.0] * z_dim], "model": "sg"}).replace("0.0]", "NaN]")
    error(http.post("/generate", content=raw, headers={"content-type": "application/json"}), 422, "z")
    assert "finite" in error(http.post("/generate", json={"z": [[1e6] * z_dim], "model": "sg"}), 422, "z")
    assert "exactly one" in error(http.post("/generate", json={"seeds": [1], "z": [[0.0] * z_dim]}), 422, "z")
    assert "psi" in error(http.post("/generate", json={"w": [w], "psi": 0.5, "model": "sg"}), 422, "psi")
    assert "mix" in error(http.post("/generate", json={"w": [w], "mix_seed": 2, "model": "sg"}), 422, "mix_seed")
    error(http.post("/generate", json={"z": [[0.0] * z_dim], "noise": "random", "model": "sg"}), 422, "noise")
    assert "no w space" in error(http.post("/generate", json={"w": [[0.0] * 8], "model": "pg"}), 400, "w")
    assert "too many" in error(http.post("/generate", json={"z": [[0.0] * z_dim] * (MAX_SEEDS + 1),
                                                            "model": "sg"}), 413, "z")
    r = http.post("/generate", json={"w": [w] * 40, "model": "sg"})  # over --max-body-bytes 100000
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert "no w space" in error(http.get("/interpolate", params={"seed": 1, "to_seed": 2, "steps": 3, "space": "w",
                                                                 "model": "pg"}), 400, "space")
    error(http.get("/interpolate", params={"seed": 1, "to_seed": 2, "steps": 1}), 422, "steps")
    error(http.get("/interpolate", params={"seed": 1, "to_seed": 2, "steps": MAX_SEEDS + 1}), 413, "steps")
    error(http.get("/interpolate", params={"seed": 1, "to_seed": 2, "steps": 3, "noise": "random"}), 422, "noise")
    error(http.get("/latents", params={"seed": 1, "noise": "none"}), 422, "noise")  # has no bearing on latents
    error(http.get("/latents", params={"seed": 1, "model": "nope"}), 404, "model")
    assert images_made(http) == before


def test_the_openapi_schema_documents_latents(http):
    schema = http.get("/openapi.json").json()
    assert {"/latents", "/interpolate"} <= set(schema["paths"])
    names = {p["name"] for p in schema["paths"]["/interpolate"]["get"]["parameters"]}
    assert {"seed", "to_seed", "steps", "space", "format", "fps", "psi", "model"} <= names
    assert {p["name"] for p in schema["paths"]["/latents"]["get"]["parameters"]} >= {"seed", "psi", "class"}
    body = schema["components"]["schemas"]["GenerateBody"]["properties"]
    assert {"seeds", "z", "w"} <= set(body)
