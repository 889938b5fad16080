"""The bundled models: both load by name, carry their data's licence and training summary, make emoji-like images,
and `ganserve serve` with no model serves both over HTTP, the ProGAN by default and the StyleGAN for style mixing."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec, make_specs
from ganserve.models.weights import DEFAULT_MODEL, WEIGHTS_NAME, bundled_models, load_config, resolve_model
from ganserve.serve.process import ServerProcess

NAMES = ("progan-emoji64", "stylegan-emoji64")


def test_both_models_are_bundled_the_progan_one_first_each_small_and_attributed():
    zoo = bundled_models()
    assert list(zoo)[:1] == [DEFAULT_MODEL] == ["progan-emoji64"] and set(NAMES) <= set(zoo)
    for name in NAMES:
        directory = resolve_model(name)
        assert (directory / WEIGHTS_NAME).stat().st_size <= 25 * 2**20
        config = load_config(directory)
        assert config.arch == name.split("-")[0] and config.resolution == 64
        assert "Twemoji" in config.license and "CC-BY 4.0" in config.license and "Apache" in config.license
        summary = config.training
        assert summary["dataset"] == "emoji64.zip" and summary["images"] == 7572 and summary["kimg"] > 50
        assert 0 < summary["swd_floor_x1e3"] < summary["swd_x1e3"]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_models_draw_on_a_light_background_unlike_an_untrained_model(name):
    """Emoji are drawn on transparency, composited over white for training: the data is a coloured object in the
    middle of a near-white square. An untrained model makes dark grey noise everywhere. (A crude check: how
    emoji-like the images are is shown by the README's pictures and measured by their SWD.)"""
    backend = load_backend(resolve_model(name), "torch", "cpu")
    images = backend.generate(make_specs(backend.config, list(range(16)))).astype(np.float32)
    border = np.concatenate([images[:, :3].reshape(16, -1, 3), images[:, -3:].reshape(16, -1, 3),
                             images[:, :, :3].reshape(16, -1, 3), images[:, :, -3:].reshape(16, -1, 3)], axis=1)
    centre = images[:, 24:40, 24:40].reshape(16, -1, 3)
    # Measured on 256 real images: border 244, centre 161; on an untrained model of this size: border 89, centre 73;
    # on the bundled models: progan 248 and 152, stylegan 231 and 153.
    edge, middle = np.median(border.mean(axis=(1, 2))), np.median(centre.mean(axis=(1, 2)))
    assert edge > 150  # light at the edges, as the data and unlike an untrained model
    assert middle < edge  # ... with something darker drawn in the middle
    assert np.median(centre.std(axis=1).mean(axis=1)) > 10  # ... with colour and shape in it
    assert images.reshape(16, -1).std(axis=0).mean() > 10  # different seeds, different images


def test_serve_with_no_model_serves_the_progan_and_mixes_styles_with_the_stylegan(tmp_path):
    flags = ["--backend", "torch", "--device", "cpu", "--log-level", "warning"]
    mixing = {"seed": 42, "mix_seed": 7, "mix_layers": "coarse"}
    with ServerProcess([], *flags, log=tmp_path / "server.log") as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            models = http.get("/models").json()
            r = http.get("/generate", params={"seed": 42})
            refused = http.get("/generate", params=mixing)  # the default ProGAN has no styles to mix
            mixed = http.get("/generate", params={**mixing, "model": "stylegan-emoji64"})
    assert refused.status_code == 400 and "style mixing needs a StyleGAN model" in refused.text
    assert mixed.status_code == 200 and mixed.headers["x-model"] == "stylegan-emoji64"
    assert models["default"] == DEFAULT_MODEL and set(NAMES) <= {m["name"] for m in models["models"]}
    assert r.status_code == 200 and r.headers["x-model"] == DEFAULT_MODEL
    backend = load_backend(resolve_model(DEFAULT_MODEL), "torch", "cpu")
    expected = backend.generate([make_spec(backend.config, 42)])[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), expected)
