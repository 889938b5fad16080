"""The HTTP server, run as a real subprocess on a loopback port and spoken to over HTTP.

One server (a tiny StyleGAN and a tiny ProGAN) for the whole module; images are checked against the torch backend.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import generated, get_image, pixels, saved_stylegan, served, stream_parts

from ganserve.client import Client
from ganserve.inference.registry import load_backend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> str:
    """A 64x64 StyleGAN slow enough (about 0.1 s a batch on a CPU) that streaming is visible in time."""
    return saved_stylegan(tmp_path_factory.mktemp("big") / "big", resolution=64, fmap_base=512, fmap_max=64)


@pytest.fixture(scope="module")
def server(model_dirs, big_model, tmp_path_factory):
    models = [f"sg={model_dirs['stylegan']}", f"pg={model_dirs['progan']}", f"big={big_model}"]
    flags = ["--backend", "torch", "--device", "cpu", "--max-batch-size", "16", "--batch-timeout-ms", "20",
             "--max-seeds", "200", "--log-level", "warning"]
    yield from served(models, flags, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def reference(model_dirs, big_model):
    """Pixels from the torch backend in this process: what `ganserve generate` writes."""
    backends = {"sg": load_backend(model_dirs["stylegan"], "torch", "cpu"),
                "pg": load_backend(model_dirs["progan"], "torch", "cpu"),
                "big": load_backend(big_model, "torch", "cpu")}

    def images(seeds, model="sg", **params):
        return generated(backends[model], seeds, **params)

    return images


def test_get_returns_the_png_that_ganserve_generate_writes(http, model_dirs, tmp_path):
    r = http.get("/generate", params={"seed": 42, "psi": 0.7})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["x-seed"] == "42" and r.headers["x-model"] == "sg" and int(r.headers["x-batch-size"]) >= 1
    subprocess.run(
        [sys.executable, "-m", "ganserve.cli", "generate", "--model", model_dirs["stylegan"], "--seeds", "42",
         "--psi", "0.7", "--outdir", str(tmp_path), "--quiet", "--device", "cpu", "--backend", "torch"],
        check=True, timeout=120,
    )
    assert np.array_equal(pixels(r.content), np.asarray(Image.open(tmp_path / "seed0042.png")))


def test_get_answers_alike_on_the_fast_path_and_through_fastapi(http):
    """GET /generate skips FastAPI (routes.FastGet) and parses its query as the FastAPI route does (params.parse_query):
    a parameter given twice counts with its last value. Both must give the same image and headers."""
    fast = http.get("/generate", params={"seed": 7, "psi": 0.6})
    slow = http.get("/generate?seed=7&psi=0.9&psi=0.6")
    assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
    assert fast.content == slow.content
    for name in ("content-type", "content-length", "x-seed", "x-model"):
        assert fast.headers[name] == slow.headers[name], name


def test_64_concurrent_requests_share_batches_and_match_single_images(http, reference):
    seeds = list(range(100, 164))
    barrier = threading.Barrier(len(seeds))

    def fetch(seed):
        barrier.wait()
        return http.get("/generate", params={"seed": seed})

    with ThreadPoolExecutor(len(seeds)) as pool:
        responses = list(pool.map(fetch, seeds))
    assert [r.status_code for r in responses] == [200] * 64
    expected = reference(seeds)
    for seed, r, want in zip(seeds, responses, expected):
        assert r.headers["x-seed"] == str(seed)
        assert np.array_equal(pixels(r.content), want), f"seed {seed} differs from its single image"
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    # the same seeds one at a time (each in a batch of its own) give the same pixels
    for seed in seeds[:3]:
        assert np.array_equal(get_image(http, seed=seed), expected[seed - 100])
    metrics = http.get("/metrics").text
    batches = float(re.search(r'ganserve_batch_size_count\{model="sg"\} (\S+)', metrics).group(1))
    singles = float(re.search(r'ganserve_batch_size_bucket\{le="1.0",model="sg"\} (\S+)', metrics).group(1))
    assert batches - singles >= 1, "no batch of more than one image was recorded"


@pytest.mark.parametrize("model", ["sg", "pg"])
def test_psi_zero_gives_the_same_image_for_every_seed(http, model):
    a, b = get_image(http, seed=1, psi=0, model=model), get_image(http, seed=2, psi=0, model=model)
    assert np.array_equal(a, b)
    assert not np.array_equal(get_image(http, seed=1, model=model), get_image(http, seed=2, model=model))


def test_style_mixing_changes_the_image_and_all_layers_give_the_mix_seeds_image(http, reference):
    plain, mixed = get_image(http, seed=1), get_image(http, seed=1, mix_seed=7, mix_layers="coarse")
    assert not np.array_equal(plain, mixed)
    assert np.array_equal(mixed, reference([1], mix_seed=7, mix_layers="coarse")[0])
    assert np.array_equal(get_image(http, seed=1, mix_seed=7, mix_layers="all"), get_image(http, seed=7))
    assert np.array_equal(get_image(http, seed=1, mix_seed=7, mix_layers="0-5"), get_image(http, seed=7))


def test_random_noise_is_reproducible_and_differs_from_const(http):
    a, b = get_image(http, seed=3, noise="random"), get_image(http, seed=3, noise="random")
    assert np.array_equal(a, b) and not np.array_equal(a, get_image(http, seed=3))


def test_no_noise_is_reproducible_differs_from_const_and_reaches_the_client(http, server, reference):
    a, b = get_image(http, seed=3, noise="none"), get_image(http, seed=3, noise="none")
    assert np.array_equal(a, b) and not np.array_equal(a, get_image(http, seed=3))
    assert np.array_equal(a, reference([3], noise="none")[0])
    with Client(server.url) as client:
        assert np.array_equal(pixels(client.generate_bytes(3, noise="none")), a)
        assert dict(client.generate_many_bytes([3], noise="none"))[3] == http.get(
            "/generate", params={"seed": 3, "noise": "none"}).content
    assert np.array_equal(get_image(http, seed=3, model="pg", noise="none"), get_image(http, seed=3, model="pg"))


def test_post_streams_100_images_the_first_before_the_last_is_generated(server, reference):
    seeds = list(range(300, 400))
    arrivals, parts = [], []
    body = {"seeds": "300-399", "psi": 0.5, "model": "big"}
    with httpx.stream("POST", f"{server.url}/generate", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["x-count"] == "100" and r.headers["x-model"] == "big"
        for part in stream_parts(r):
            arrivals.append(time.time())
            parts.append(part)
    assert sorted(int(p.headers["x-seed"]) for p in parts) == seeds
    expected = reference(seeds, model="big", psi=0.5)
    for p in parts:
        assert p.headers["content-type"] == "image/png"
        assert np.array_equal(pixels(p.body), expected[int(p.headers["x-index"])])
    assert max(int(p.headers["x-batch-size"]) for p in parts) <= 16  # split into device-sized batches
    last_generated = max(float(p.headers["x-generated-at"]) for p in parts)
    assert arrivals[0] < last_generated, "the first image arrived only after the last one was generated"


# (expected status, field named in the error, [queries of GET /generate that get it])
BAD_GETS = [
    (422, "seed", ["seed=-1", "seed=4294967296", f"seed={'9' * 5000}", "seed=1.5", "seed=abc", ""]),
    (422, "psi", ["seed=1&psi=nan", "seed=1&psi=inf", "seed=1&psi=-inf", "seed=1&psi=2.5"]),
    (422, "mix_layers", [f"seed=1&mix_seed=2&mix_layers={layers}" for layers in ("99", "3-1", "elbow")]),
    (422, "mix_seed", ["seed=1&mix_layers=coarse"]),
    (400, "mix_seed", ["seed=1&model=pg&mix_seed=2"]),
    (422, "truncation_cutoff", ["seed=1&truncation_cutoff=7"]),
    (422, "noise", ["seed=1&noise=loud"]),
    (422, "format", ["seed=1&format=gif"]),
    (422, "sed", ["seed=1&sed=2"]),
    (404, "model", ["seed=1&model=nope"]),
    (422, "model", ["seed=1&model=../sg", "seed=1&model=/etc/passwd", "seed=1&model=sg%2F..%2Fpg"]),
]
# (expected status, field named in the error or None, [bodies of POST /generate that get it])
BAD_POSTS = [
    (422, "body", [b'{"seeds": [1, 2', b"not json at all", b"[1, 2]"]),
    (422, "seeds", [b"{}", b'{"seeds": []}', b'{"seeds": [1, -3]}', b'{"seeds": [1.5]}', b'{"seeds": [true]}',
                    b'{"seeds": "9-1"}']),
    (413, "seeds", [b'{"seeds": "0-4294967295"}', b'{"seeds": "0-200"}', b'{"seeds": [' + b"1," * 200 + b"1]}"]),
    (422, "psi", [b'{"seeds": [1], "psi": NaN}', b'{"seeds": [1], "psi": Infinity}']),
    (422, "mix_layers", [b'{"seeds": [1], "mix_seed": 2, "mix_layers": [0, 64]}']),
    (422, "model", [b'{"seeds": [1], "model": "../../etc"}']),
    (404, "model", [b'{"seeds": [1], "model": "nope"}']),
    (400, "mix_seed", [b'{"seeds": [1], "model": "pg", "mix_seed": 3}']),
    (413, None, [b'{"seeds": [' + b"1," * 600_000 + b"1]}"]),
]
# (method, target, body, expected status, field named in the error)
BAD_REQUESTS = [("GET", f"/generate?{query}" if query else "/generate", None, status, field)
                for status, field, queries in BAD_GETS for query in queries]
BAD_REQUESTS += [("POST", "/generate", body, status, field) for status, field, bodies in BAD_POSTS for body in bodies]


def test_bad_requests_get_4xx_json_naming_the_field_and_spare_their_neighbours(server, reference):
    n_good = 8
    barrier = threading.Barrier(len(BAD_REQUESTS) + n_good)

    def send(method, target, body):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            barrier.wait()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            return client.request(method, target, content=body, headers=headers)

    jobs = [(m, t, b) for m, t, b, _, _ in BAD_REQUESTS] + [("GET", f"/generate?seed={s}", None) for s in range(n_good)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: send(*job), jobs))
    for (method, target, _, status, field), r in zip(BAD_REQUESTS, responses):
        case = f"{method} {target[:60]}"
        assert r.status_code == status, f"{case}: {r.status_code} {r.text[:300]}"
        body = r.json()
        assert isinstance(body["detail"], str) and body["detail"], case
        if field is not None:
            assert body["field"] == field, f"{case}: {body}"
    expected = reference(list(range(n_good)))
    for seed, r in enumerate(responses[len(BAD_REQUESTS):]):
        assert r.status_code == 200 and np.array_equal(pixels(r.content), expected[seed])


def test_unknown_routes_and_methods_answer_json(http):
    assert http.get("/nowhere").json()["detail"] and http.get("/nowhere").status_code == 404
    r = http.delete("/generate")
    assert r.status_code == 405 and r.json()["detail"]


def test_models_health_and_metrics(http):
    models = http.get("/models").json()
    assert models["default"] == "sg"
    by_name = {m["name"]: m for m in models["models"]}
    assert by_name["sg"] == {"name": "sg", "arch": "stylegan", "resolution": 16, "num_ws": 6, "img_channels": 3,
                             "supports_mixing": True, "c_dim": 0, "backend": "torch"}
    assert by_name["pg"]["arch"] == "progan" and by_name["pg"]["supports_mixing"] is False
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("ganserve_requests_total", "ganserve_request_seconds_bucket", "ganserve_queue_seconds_bucket",
                 "ganserve_batch_size_bucket", "ganserve_images_generated_total", "ganserve_queue_depth"):
        assert name in metrics.text, name
    assert re.search(r'ganserve_requests_total\{method="GET",route="/generate",status="200"\} [1-9]', metrics.text)
