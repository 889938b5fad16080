"""Documented HTTP parameters that the main server tests leave out, over real HTTP: psi outside [0, 1] and at the
edges of [-1, 2], psi out of range on either side (a 422 that names psi), truncation_cutoff, and what format=jpeg|webp
promises (smaller files of the same image).

One server for the module: the tiny StyleGAN and ProGAN of conftest, and the bundled stylegan-emoji64 (real image
content, for the file-format test). Images are checked against the torch backend in this process and against the
truncation formula computed by hand (tests/test_truncation_contract.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from serving import generated, get_image, pixels, served, stream_parts
from test_truncation_contract import assert_same_image, independent_images

from ganserve.inference.registry import load_backend

pytestmark = pytest.mark.slow
BUNDLED = "stylegan-emoji64"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    models = [f"sg={model_dirs['stylegan']}", f"pg={model_dirs['progan']}", f"emoji={BUNDLED}"]
    flags = ["--device", "cpu", "--backend", "torch", "--workers-per-device", "1", "--max-batch-size", "8",
             "--log-level", "warning"]
    yield from served(models, flags, tmp_path_factory.mktemp("contract"))


@pytest.fixture(scope="module")
def backends(model_dirs):
    return {"sg": load_backend(model_dirs["stylegan"], "torch", "cpu"),
            "pg": load_backend(model_dirs["progan"], "torch", "cpu"),
            "emoji": load_backend(BUNDLED, "torch", "cpu")}


def post_images(http, body: dict) -> dict[int, np.ndarray]:
    """seed -> pixels of a POST /generate, every part checked to be an image."""
    out = {}
    with http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200, r.read()
        for part in stream_parts(r):
            assert "x-error" not in part.headers, part.body
            out[int(part.headers["x-seed"])] = pixels(part.body)
    return out


def reference(backend, seed: int, **params) -> np.ndarray:
    return generated(backend, [seed], **params)[0]


@pytest.mark.parametrize("model", ["sg", "pg"])
def test_psi_outside_0_1_over_http_follows_the_truncation_formula(http, backends, model):
    """psi -1, -0.5, 1.5 and 2 are served (GET and POST), as w_avg + psi * (w - w_avg): nothing clamps psi."""
    b = backends[model]
    at = {}
    for psi in (-1.0, -0.5, 1.5, 2.0):
        at[psi] = got = get_image(http, seed=4, psi=psi, model=model)
        assert np.array_equal(got, reference(b, 4, psi=psi)), f"{model} psi={psi}: not the library's image"
        assert_same_image(got[None], independent_images(b.G, [4], psi), f"{model} psi={psi} over HTTP")
    for psi in (0.0, 1.0):
        at[psi] = get_image(http, seed=4, psi=psi, model=model)
    for outside, inside in ((-1.0, 0.0), (-0.5, 0.0), (1.5, 1.0), (2.0, 1.0)):
        assert not np.array_equal(at[outside], at[inside]), f"{model}: psi={outside} gave the image of psi={inside}"
    for psi in (-1.0, 2.0):
        got = post_images(http, {"seeds": [4, 9], "psi": psi, "model": model})
        assert np.array_equal(got[4], at[psi]), f"{model}: POST psi={psi} differs from GET"
        assert np.array_equal(got[9], reference(b, 9, psi=psi)), f"{model}: POST psi={psi} seed 9"


@pytest.mark.parametrize("psi", ["-1.5", "-1.0001", "-100", "2.0001", "2.5", "1e9"])
def test_psi_out_of_range_on_either_side_is_a_422_that_names_psi(http, psi):
    for model in ("sg", "pg"):
        answers = {
            "GET": http.get(f"/generate?seed=1&psi={psi}&model={model}"),
            "POST": http.post("/generate", content=f'{{"seeds": [1, 2], "psi": {psi}, "model": "{model}"}}',
                              headers=JSON),
        }
        for method, r in answers.items():
            case = f"{method} psi={psi} model={model}"
            assert r.status_code == 422, f"{case}: {r.status_code} {r.text[:300]}"
            body = r.json()
            assert body["field"] == "psi" and "psi" in body["detail"], f"{case}: {body}"


def test_psi_at_the_edges_of_its_range_is_served(http):
    for psi in ("-1", "-1.0", "2", "2.0"):
        assert http.get(f"/generate?seed=1&psi={psi}").status_code == 200, psi
        r = http.post("/generate", content=f'{{"seeds": [1], "psi": {psi}}}', headers=JSON)
        assert r.status_code == 200 and b"X-Error" not in r.content, (psi, r.text[:300])


@pytest.mark.parametrize("cutoff", [1, 3])
def test_truncation_cutoff_over_http_truncates_only_the_layers_below_it(http, backends, cutoff):
    b = backends["sg"]
    got = get_image(http, seed=6, psi=-0.5, truncation_cutoff=cutoff)
    assert np.array_equal(got, reference(b, 6, psi=-0.5, truncation_cutoff=cutoff))
    assert_same_image(got[None], independent_images(b.G, [6], -0.5, cutoff), f"cutoff={cutoff} over HTTP")
    assert not np.array_equal(got, get_image(http, seed=6, psi=-0.5))
    assert not np.array_equal(got, get_image(http, seed=6))
    posted = post_images(http, {"seeds": "6-7", "psi": -0.5, "truncation_cutoff": cutoff})
    assert np.array_equal(posted[6], got)
    assert np.array_equal(posted[7], reference(b, 7, psi=-0.5, truncation_cutoff=cutoff))


def test_truncation_cutoff_zero_over_http_is_no_truncation(http):
    plain = get_image(http, seed=6)
    assert np.array_equal(get_image(http, seed=6, psi=0.2, truncation_cutoff=0), plain)
    assert np.array_equal(post_images(http, {"seeds": [6], "psi": 2, "truncation_cutoff": 0})[6], plain)
    num_ws = next(m["num_ws"] for m in http.get("/models").json()["models"] if m["name"] == "sg")
    assert np.array_equal(get_image(http, seed=6, psi=0.2, truncation_cutoff=num_ws), get_image(http, seed=6, psi=0.2))


def test_jpeg_and_webp_are_smaller_formats_of_the_same_image(http):
    """format=jpeg|webp: fewer bytes than the PNG of the same request, decoding to nearly its pixels (real content:
    the bundled model's images; on tiny noise-like 16x16 images JPEG's fixed headers can outweigh a PNG)."""
    for seed in (5, 6):
        png = http.get("/generate", params={"seed": seed, "model": "emoji"})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        want = pixels(png.content).astype(int)
        other = get_image(http, seed=seed + 100, model="emoji").astype(int)
        for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
            r = http.get("/generate", params={"seed": seed, "format": fmt, "model": "emoji"})
            assert r.status_code == 200 and r.headers["content-type"] == f"image/{fmt}" and r.content.startswith(magic)
            got = pixels(r.content).astype(int)
            assert got.shape == want.shape == (64, 64, 3)
            error = np.abs(got - want).mean()
            assert error < 8, f"{fmt} seed {seed}: mean abs difference {error:.1f} from the PNG's pixels"
            assert error < np.abs(got - other).mean() / 4, f"{fmt} seed {seed}: not recognisably the same image"
            assert len(r.content) < len(png.content), f"{fmt} seed {seed}: {len(r.content)} B, PNG {len(png.content)} B"
