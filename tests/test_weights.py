import json

import pytest
import torch
from conftest import tiny_generator

from ganserve.errors import ModelLoadError
from ganserve.imaging import to_uint8
from ganserve.models.latents import seeds_to_z
from ganserve.models.weights import CONFIG_NAME, WEIGHTS_NAME, load_model, resolve_model, save_model, weights_sha256


def test_save_load_generate_gives_identical_images(arch, tmp_path):
    G = tiny_generator(arch)
    save_model(G, tmp_path / "m")
    H = load_model(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    z = torch.from_numpy(seeds_to_z(range(6), G.config.z_dim))
    with torch.no_grad():
        assert torch.equal(to_uint8(G(z)), to_uint8(H(z)))
    assert torch.equal(G.w_avg, H.w_avg)
    assert H.config == G.config


def test_weights_hold_w_avg_and_noise_buffers_and_no_pickle(tmp_path):
    save_model(tiny_generator("stylegan"), tmp_path)
    raw = (tmp_path / WEIGHTS_NAME).read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "w_avg" in header
    assert sum(k.endswith("noise_const") for k in header) == 6  # num_ws at 16x16
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["arch"] == "stylegan" and config["num_ws"] == 6 and config["channels"]["16"] == 16


def test_training_summary_round_trips(tmp_path):
    G = tiny_generator("progan")
    G.config.training = {"kimg": 12.5, "dataset": "toy"}
    save_model(G, tmp_path)
    assert load_model(tmp_path).config.training == {"kimg": 12.5, "dataset": "toy"}


def test_loading_problems_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(tmp_path)
    save_model(tiny_generator("stylegan"), tmp_path)
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**cfg, "fmap_max": 64}))
    with pytest.raises(ModelLoadError, match="does not match config.json.*wrong shape"):
        load_model(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**cfg, "colour": "blue"}))
    with pytest.raises(ModelLoadError, match="unknown config keys: colour"):
        load_model(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    (tmp_path / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="unreadable weights"):
        load_model(tmp_path)


def test_sha256_changes_with_the_weights(tmp_path):
    save_model(tiny_generator("stylegan", seed=1), tmp_path / "a")
    save_model(tiny_generator("stylegan", seed=2), tmp_path / "b")
    assert weights_sha256(tmp_path / "a") != weights_sha256(tmp_path / "b")
    assert len(weights_sha256(tmp_path / "a")) == 64


def test_resolve_model_refuses_unknown_names(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    with pytest.raises(ModelLoadError, match="no model directory or bundled model named"):
        resolve_model("no-such-model")
