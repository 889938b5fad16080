"""Everything ganserve does, on imported StyleGAN2 and StyleGAN3 models: the HTTP server (GET, batched POST,
truncation, style mixing, /models, /metrics), the Python client (blocking and async) and `ganserve sample`, an ONNX
export served by ONNX Runtime, the compile backend, the gallery in headless Chromium, and `ganserve eval` (including
class-conditional models).

The models are NVlabs-format pickles written by the test writers of tests/test_import_stylegan2.py and
tests/test_stylegan3.py, imported with ganserve's importer; one server on loopback serves both for the module.
Served pixels are checked against the torch backend in this process, which `ganserve generate` matches.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import generated, http_client, images_by_seed, parts_of, pixels, served
from serving import get_image as get_any_image
from test_gallery import ARTIFACTS, _generation, _loaded, _rerendered, _wait, browser  # noqa: F401 (a fixture)
from test_import_stylegan2 import write_nvlabs_pickle
from test_stylegan3 import write_sg3_pickle

from ganserve.cli import main
from ganserve.client import AsyncClient, Client, ServerError
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec
from ganserve.models.importers import import_checkpoint
from ganserve.serve.process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
HTTP_TIMEOUT_S = 120  # the `http` fixture of conftest.py
NUM_WS = {"sg2": 6, "sg3": 8}  # the writers' 16x16 networks, as tests/test_import_stylegan2.py and test_stylegan3.py


def imported(tmp: Path, name: str, c_dim: int = 0) -> Path:
    """A model directory made the way a user makes one: an NVlabs pickle through ganserve's importer."""
    pkl = tmp / f"{name}.pkl"
    if name.startswith("sg2"):
        write_nvlabs_pickle(pkl, seed=1, c_dim=c_dim)
    else:
        write_sg3_pickle(pkl, seed=2, cfg="t", c_dim=c_dim, rotate=20.0)
    return import_checkpoint(pkl, tmp / name, progress=lambda line: None)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    return {name: imported(root, name) for name in ("sg2", "sg3")}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    flags = ["--backend", "torch", "--device", "cpu", "--workers-per-device", "1", "--max-batch-size", "16",
             "--batch-timeout-ms", "50", "--log-level", "warning"]
    yield from served([f"{name}={path}" for name, path in models.items()], flags, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def reference(models):
    """Pixels of the torch backend in this process: reference(model, seeds, **params) -> {seed: [H, W, 3] uint8}."""
    backends = {name: load_backend(path, "torch", "cpu") for name, path in models.items()}

    def images(model, seeds, **params):
        return dict(zip(seeds, generated(backends[model], seeds, **params)))

    return images


def get_image(http, **params) -> np.ndarray:
    """Pixels of GET /generate, which must answer 200 with a PNG."""
    return get_any_image(http, png=True, **params)


def ganserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def images_generated(http, model: str) -> float:
    metrics = http.get("/metrics").text
    found = re.findall(rf'ganserve_images_generated_total\{{(?=[^}}]*model="{model}")[^}}]*\}} (\S+)', metrics)
    return sum(float(v) for v in found)


# -- the server -----------------------------------------------------------------------------------------------
def test_models_lists_both_imports_with_their_num_ws(http):
    listed = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert listed["sg2"] == {"name": "sg2", "arch": "stylegan2", "resolution": 16, "num_ws": NUM_WS["sg2"],
                             "img_channels": 3, "supports_mixing": True, "c_dim": 0, "backend": "torch"}
    assert listed["sg3"] == {"name": "sg3", "arch": "stylegan3", "resolution": 16, "num_ws": NUM_WS["sg3"],
                             "img_channels": 3, "supports_mixing": True, "c_dim": 0, "backend": "torch"}


@pytest.mark.parametrize("model", ["sg2", "sg3"])
def test_get_returns_the_png_that_ganserve_generate_writes(http, models, model, tmp_path):
    r = ganserve("generate", "--model", str(models[model]), "--seeds", "5,42", "--psi", "0.7", "--outdir",
                 str(tmp_path), "--device", "cpu", "--backend", "torch", "--quiet")
    assert r.returncode == 0, r.stderr
    for seed in (5, 42):
        got = get_image(http, seed=seed, psi=0.7, model=model)
        assert got.shape == (16, 16, 3)
        assert np.array_equal(got, np.asarray(Image.open(tmp_path / f"seed{seed:04d}.png"))), seed
    assert not np.array_equal(get_image(http, seed=5, psi=0.7, model=model),
                              get_image(http, seed=42, psi=0.7, model=model))


def test_stylegan3_post_streams_a_batch_of_seeds_equal_to_single_images(server, reference):
    seeds = list(range(20, 32))
    r = httpx.post(f"{server.url}/generate", json={"seeds": seeds, "psi": 0.6, "model": "sg3"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-count"] == str(len(seeds)) and r.headers["x-model"] == "sg3"
    parts = parts_of(r)
    assert sorted(int(p.headers["x-seed"]) for p in parts) == seeds
    want = reference("sg3", seeds, psi=0.6)
    for p in parts:
        assert p.headers["content-type"] == "image/png"
        assert np.array_equal(pixels(p.body), want[int(p.headers["x-seed"])]), p.headers["x-seed"]
    assert max(int(p.headers["x-batch-size"]) for p in parts) > 1, "the seeds were never batched together"


def test_stylegan3_truncation_psi_and_cutoff(http, reference):
    assert np.array_equal(get_image(http, seed=1, psi=0, model="sg3"), get_image(http, seed=2, psi=0, model="sg3"))
    plain, truncated = get_image(http, seed=3, model="sg3"), get_image(http, seed=3, psi=0.5, model="sg3")
    cut = get_image(http, seed=3, psi=0.5, truncation_cutoff=4, model="sg3")
    assert np.array_equal(truncated, reference("sg3", [3], psi=0.5)[3])
    assert np.array_equal(cut, reference("sg3", [3], psi=0.5, truncation_cutoff=4)[3])
    assert not np.array_equal(cut, truncated) and not np.array_equal(cut, plain)
    # a cutoff at num_ws truncates every layer, as no cutoff does
    assert np.array_equal(get_image(http, seed=3, psi=0.5, truncation_cutoff=NUM_WS["sg3"], model="sg3"), truncated)
    r = http.get("/generate", params={"seed": 3, "psi": 0.5, "truncation_cutoff": NUM_WS["sg3"] + 1, "model": "sg3"})
    assert r.status_code == 422 and r.json()["field"] == "truncation_cutoff", r.text


def test_stylegan3_style_mixing_follows_its_own_ws(http, reference):
    plain, mixed = get_image(http, seed=1, model="sg3"), get_image(http, seed=1, mix_seed=7, mix_layers="coarse",
                                                                   model="sg3")
    assert not np.array_equal(plain, mixed)
    assert np.array_equal(mixed, reference("sg3", [1], mix_seed=7, mix_layers="coarse")[1])
    every = f"0-{NUM_WS['sg3'] - 1}"
    assert np.array_equal(get_image(http, seed=1, mix_seed=7, mix_layers=every, model="sg3"),
                          get_image(http, seed=7, model="sg3"))
    r = http.get("/generate", params={"seed": 1, "mix_seed": 7, "mix_layers": str(NUM_WS["sg3"]), "model": "sg3"})
    assert r.status_code == 422 and r.json()["field"] == "mix_layers" and every in r.json()["detail"], r.text
    r = http.post("/generate", json={"seeds": [1, 2], "mix_seed": 7, "mix_layers": [0, 1], "model": "sg3"})
    assert r.status_code == 200, r.text
    parts = images_by_seed(parts_of(r))
    want = reference("sg3", [1, 2], mix_seed=7, mix_layers=[0, 1])
    assert sorted(parts) == [1, 2] and all(np.array_equal(parts[s], want[s]) for s in parts)


def test_metrics_count_the_stylegan3_images(http):
    before = {m: images_generated(http, m) for m in ("sg2", "sg3")}
    get_image(http, seed=11, model="sg3")
    get_image(http, seed=12, model="sg3", format="png")
    r = http.post("/generate", json={"seeds": [13, 14, 15], "model": "sg3"})
    assert r.status_code == 200, r.text
    assert images_generated(http, "sg3") - before["sg3"] == 5
    assert images_generated(http, "sg2") == before["sg2"]
    metrics = http.get("/metrics").text
    assert re.search(r'ganserve_batch_size_count\{model="sg3"\} [1-9]', metrics)


# -- the Python client ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["sg2", "sg3"])
def test_client_gets_the_reference_pixels(server, reference, model):
    want = reference(model, list(range(8)), psi=0.8)
    with Client(server.url) as client:
        image = client.generate(3, model=model, psi=0.8)
        assert isinstance(image, Image.Image) and image.size == (16, 16)
        assert np.array_equal(np.asarray(image), want[3])
        assert client.generate_bytes(3, model=model, psi=0.8).startswith(b"\x89PNG")
        got = dict(client.generate_many("0-7", model=model, psi=0.8, concurrency=2))
        assert sorted(got) == list(range(8)) and all(np.array_equal(np.asarray(got[s]), want[s]) for s in got)
        mixed = client.generate(2, model=model, psi=0.8, mix_seed=6, mix_layers="all")
        assert np.array_equal(np.asarray(mixed), want[6])
        with pytest.raises(ServerError) as e:
            client.generate(1, model=model, mix_seed=2, mix_layers="99")
        assert e.value.status == 422 and e.value.field == "mix_layers"


@pytest.mark.parametrize("model", ["sg2", "sg3"])
def test_async_client_gets_the_reference_pixels(server, reference, model):
    async def run():
        async with AsyncClient(server.url) as client:
            listed = await client.models()
            one = await client.generate(4, model=model)
            many = {s: png async for s, png in client.generate_many_bytes(range(10, 16), model=model, concurrency=3)}
            with pytest.raises(ServerError) as e:
                await client.generate_bytes(1, model=model, psi=float("nan"))
            return listed, one, many, e.value

    listed, one, many, error = asyncio.run(run())
    assert model in {m["name"] for m in listed["models"]}
    assert np.array_equal(np.asarray(one), reference(model, [4])[4])
    want = reference(model, list(range(10, 16)))
    assert sorted(many) == list(range(10, 16)) and all(np.array_equal(pixels(many[s]), want[s]) for s in many)
    assert error.status == 422 and error.field == "psi"


def test_sample_command_writes_the_stylegan3_images(server, reference, tmp_path):
    r = ganserve("sample", "--url", server.url, "--model", "sg3", "--seeds", "0-5", "--psi", "0.8",
                 "--mix-seed", "9", "--outdir", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    want = reference("sg3", list(range(6)), psi=0.8, mix_seed=9)
    for seed in range(6):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"seed{seed:04d}.png")), want[seed]), seed


@pytest.mark.slow
def test_stylegan3_onnx_export_served_by_onnx_runtime_matches_torch(models, reference, tmp_path):
    """`ganserve export` of the StyleGAN3 import, served with --backend onnxruntime: within one level of torch.
    (An imported StyleGAN2 served from its export is in tests/test_same_pixels.py.)"""
    model = Path(shutil.copytree(models["sg3"], tmp_path / "sg3"))
    r = ganserve("export", "--model", str(model), "--quiet")
    assert r.returncode == 0, r.stderr
    flags = ["--backend", "onnxruntime", "--device", "cpu", "--workers-per-device", "1", "--log-level", "warning"]
    with ServerProcess([f"sg3={model}"], *flags, log=tmp_path / "server.log") as server:
        with http_client(server, timeout=120) as http:
            listed = http.get("/models").json()["models"]
            assert [(m["backend"], m["num_ws"]) for m in listed] == [("onnxruntime", NUM_WS["sg3"])]
            r = http.post("/generate", json={"seeds": "0-7", "psi": 0.7})
            assert r.status_code == 200, r.text
            got = images_by_seed(parts_of(r))
            got[100] = get_image(http, seed=1, mix_seed=7, mix_layers="coarse", truncation_cutoff=4, psi=0.5)
    want = {**reference("sg3", list(range(8)), psi=0.7),
            100: reference("sg3", [1], mix_seed=7, mix_layers="coarse", truncation_cutoff=4, psi=0.5)[1]}
    assert sorted(got) == sorted(want)
    diff = np.abs(np.stack([got[s] for s in want]).astype(int) - np.stack(list(want.values())).astype(int))
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 1, ((diff == 0).mean(), diff.max())


# -- the gallery ----------------------------------------------------------------------------------------------
# [seed, RGBA pixels] of every decoded image in the seed grid, read back through a canvas.
GRID_PIXELS = """
return [...document.querySelectorAll('#grid .cell.loaded')].map((cell) => {
  const img = cell.querySelector('img');
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  return [Number(cell.dataset.seed), Array.from(ctx.getImageData(0, 0, c.width, c.height).data)];
});
"""


def test_gallery_shows_the_stylegan3_model_and_mixes_its_styles(browser, server, reference):  # noqa: F811
    browser.get(server.url + "/?model=sg3")
    _loaded(browser, "#grid", 24, "the StyleGAN3 seed grid")
    assert browser.find_element("id", "model").get_attribute("value") == "sg3"
    assert f"num_ws {NUM_WS['sg3']}" in browser.find_element("id", "model-info").text
    shown = {seed: np.array(rgba, np.uint8).reshape(16, 16, 4) for seed, rgba in browser.execute_script(GRID_PIXELS)}
    assert sorted(shown) == list(range(24))
    want = reference("sg3", list(range(24)))
    for seed, image in shown.items():
        assert (image[..., 3] == 255).all() and np.array_equal(image[..., :3], want[seed]), seed

    # the mixing grid with every layer mixed: each cell is its column seed's image
    browser.execute_script("document.getElementById('mix-preset').value = 'all'")
    before = _generation(browser)
    browser.find_element("id", "mix-go").click()
    _rerendered(browser, before)
    _loaded(browser, "#mix-grid", 3 * 4 + 3 + 4, "the StyleGAN3 mixing grid")
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#mix-grid tr')].map(tr => [...tr.querySelectorAll('.cell')]"
        ".map(c => { const i = c.querySelector('img'); const k = document.createElement('canvas');"
        "k.width = i.naturalWidth; k.height = i.naturalHeight; const x = k.getContext('2d'); x.drawImage(i, 0, 0);"
        "return Array.from(x.getImageData(0, 0, k.width, k.height).data).join(','); }))")
    header, rows = cells[0], cells[1:]
    assert len(header) == 4 and len(rows) == 3 and all(row[1:] == header for row in rows)
    assert browser.find_element("id", "error").text == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "gallery-stylegan3.png"))

    # switching to the StyleGAN2 model re-renders the grid with its images
    before = _generation(browser)
    browser.execute_script("const s = document.getElementById('model'); s.value = 'sg2';"
                           "s.dispatchEvent(new Event('change'));")
    _rerendered(browser, before)
    _wait(browser, "return document.querySelectorAll('#grid .cell.loaded').length >= 24", what="the StyleGAN2 grid")
    shown = {seed: np.array(rgba, np.uint8).reshape(16, 16, 4) for seed, rgba in browser.execute_script(GRID_PIXELS)}
    want = reference("sg2", sorted(shown))
    assert len(shown) == 24 and all(np.array_equal(shown[s][..., :3], want[s]) for s in shown)


# -- the compile backend --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model", ["sg2", "sg3"])
def test_compile_backend_matches_torch(models, model):
    """One dynamic-batch graph on CPU (compiled on first use, about half a minute), then batches of 1 and 5."""
    eager = load_backend(models[model], "torch", "cpu")
    compiled = load_backend(models[model], "compile", "cpu")
    config = eager.config
    specs = [make_spec(config, s, psi=0.7) for s in range(4)]
    specs += [make_spec(config, 9, mix_seed=3), make_spec(config, 8, psi=0.5, truncation_cutoff=2)]
    want = eager.generate(specs).astype(int)
    for n in (1, 5):
        got = compiled.generate(specs, batch_size=n).astype(int)
        assert got.shape == want.shape == (len(specs), 16, 16, 3)
        diff = np.abs(got - want)
        assert (diff == 0).mean() >= 0.999 and diff.max() <= 1, (n, (diff == 0).mean(), diff.max())


# -- ganserve eval --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """40 16x16 real images (SWD caps --num at half of them)."""
    data = tmp_path_factory.mktemp("eval-data")
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"{i:02d}.png")
    return data


def swd_json(capsys, model: Path, data: Path, *flags: str) -> dict:
    """`ganserve eval --json` in this process (as tests/test_swd.py runs it), to spare an interpreter start."""
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(data), "--num", "16", "--device", "cpu", "--json",
                 *flags]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model", ["sg2", "sg3"])
def test_eval_scores_an_imported_model(models, eval_data, model, capsys):
    assert main(["eval", "--model", str(models[model]), "--data", str(eval_data), "--num", "16", "--device",
                 "cpu"]) == 0
    out = capsys.readouterr().out
    assert "generated vs real" in out and "real vs real (floor)" in out and "classes" not in out
    result = swd_json(capsys, models[model], eval_data)
    assert result["num"] == 16 and result["fake"]["avg"] > 0 and "classes" not in result
    assert main(["eval", "--model", str(models[model]), "--data", str(eval_data), "--class", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class" in err and "not class-conditional" in err, err


def test_eval_of_a_class_conditional_model_draws_classes_or_takes_one(tmp_path, eval_data, capsys):
    model = imported(tmp_path, "sg2-cond", c_dim=4)
    uniform = swd_json(capsys, model, eval_data)
    assert uniform["num"] == 16 and uniform["fake"]["avg"] > 0
    classes = uniform["classes"]
    assert classes["sampled"] == "uniform" and classes["seed"] == 0
    assert sum(classes["counts"]) == 16 and sum(n > 0 for n in classes["counts"]) > 1
    assert swd_json(capsys, model, eval_data) == uniform  # the classes come from a seeded generator

    only = {k: swd_json(capsys, model, eval_data, "--class", str(k)) for k in (0, 3)}
    for k, result in only.items():
        assert result["classes"] == {"class": k, "counts": [16 if i == k else 0 for i in range(4)]}
        assert result["floor"] == uniform["floor"]  # the same reals; only the generated set changed
    assert only[0]["fake"]["avg"] != only[3]["fake"]["avg"] != uniform["fake"]["avg"]

    # the command as a user runs it: the report names the classes; a class out of range is one line, status 2
    r = ganserve("eval", "--model", str(model), "--data", str(eval_data), "--num", "16", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "generated vs real" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("classes:"))
    assert "uniformly" in line and "0-3" in line and "seed 0" in line
    r = ganserve("eval", "--model", str(model), "--data", str(eval_data), "--class", "4")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "class" in r.stderr and "[0, 3]" in r.stderr, r.stderr
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(eval_data), "--class", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class" in err and "[0, 3]" in err, err


def test_eval_of_a_class_conditional_stylegan3(tmp_path, eval_data, capsys):
    model = imported(tmp_path, "sg3-cond", c_dim=3)
    uniform = swd_json(capsys, model, eval_data)
    assert uniform["classes"]["sampled"] == "uniform" and sum(uniform["classes"]["counts"]) == 16
    only = swd_json(capsys, model, eval_data, "--class", "2")
    assert only["classes"] == {"class": 2, "counts": [0, 0, 16]} and only["fake"] != uniform["fake"]
    assert main(["eval", "--model", str(model), "--data", str(eval_data), "--class", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class" in err and "[0, 2]" in err, err
