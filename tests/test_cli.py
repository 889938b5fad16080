"""The `ganserve` console script, run as a user would (a real subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import torch_blocked_env

from ganserve.models.weights import DEFAULT_MODEL, resolve_model, weights_sha256

ROOT = Path(__file__).resolve().parent.parent


def ganserve(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"ganserve {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def test_info_prints_the_readmes_parameter_counts_exactly():
    style = ganserve("info", "--arch", "stylegan", "--resolution", "1024").stdout
    assert "num_ws:       18" in style
    assert "parameters:   mapping 2,101,248  synthesis 24,118,379  total 26,219,627" in style, style
    pro = ganserve("info", "--arch", "progan", "--resolution", "1024").stdout
    assert "parameters:   mapping 4,194,816  synthesis 18,884,299  total 23,079,115" in pro, pro


def test_init_info_generate_round_trip(tmp_path):
    model = tmp_path / "model"
    ganserve("init", "--arch", "stylegan", "--resolution", "16", "--fmap-base", "128", "--fmap-max", "32",
             "--z-dim", "32", "--w-dim", "32", "--out", str(model))
    info = ganserve("info", str(model)).stdout
    assert "stylegan" in info and "16x16" in info and "training:" in info
    again = ganserve("init", "--arch", "stylegan", "--resolution", "16", "--out", str(model), check=False)
    assert again.returncode == 2 and "--force" in again.stderr

    out = tmp_path / "out"
    # on the CPU, where batch invariance holds bit for bit (a GPU would run fp16 kernels chosen per batch size)
    ganserve("generate", "--model", str(model), "--seeds", "0-5", "--batch-size", "4", "--outdir", str(out),
             "--grid", str(out / "grid.png"), "--psi", "0.7", "--device", "cpu", "--quiet")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png"] + [f"seed{s:04d}.png" for s in range(6)]
    img = np.asarray(Image.open(out / "seed0003.png"))
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (32, 48, 3)  # 3 columns, 2 rows
    assert np.array_equal(grid[16:32, 0:16], img)  # seed 3 sits in row 1, column 0

    # one seed at a time, in another process, gives the same pixels
    single = tmp_path / "single"
    ganserve("generate", "--model", str(model), "--seeds", "3", "--outdir", str(single), "--psi", "0.7",
             "--device", "cpu", "--quiet")
    assert np.array_equal(np.asarray(Image.open(single / "seed0003.png")), img)


def test_generate_in_worker_processes_writes_the_files_of_one_process(model_dirs, tmp_path):
    """--workers 3 spreads batches over processes (each generating and writing its own); the files, and the grid,
    are those of a single process."""
    flags = ["--model", model_dirs["stylegan"], "--seeds", "0-20", "--batch-size", "4", "--device", "cpu", "--quiet"]
    for w in ("1", "3"):
        ganserve("generate", *flags, "--workers", w, "--outdir", str(tmp_path / w),
                 "--grid", str(tmp_path / f"{w}.png"))
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert names == [f"seed{s:04d}.png" for s in range(21)]
    assert sorted(p.name for p in (tmp_path / "3").iterdir()) == names
    for name in names + ["../1.png"]:
        one, three = (np.asarray(Image.open(tmp_path / w / name)) for w in ("1", "3"))
        assert np.array_equal(one, three), name
    proc = ganserve("generate", *flags, "--workers", "0", "--outdir", str(tmp_path / "0"), check=False)
    assert proc.returncode == 2 and "--workers must be at least 1" in proc.stderr.strip().splitlines()[-1]


def test_generate_with_onnx_runtime_runs_where_torch_cannot_be_imported(model_dirs, tmp_path):
    """With the default backend on the CPU (ONNX Runtime, once its export is in the cache) `generate` imports no
    torch, in its own process or in its workers: it runs with torch made unimportable, writing the same files."""
    flags = ["--model", model_dirs["stylegan"], "--seeds", "0-20", "--batch-size", "4", "--device", "cpu",
             "--workers", "2", "--quiet"]
    ganserve("generate", *flags, "--outdir", str(tmp_path / "torch-importable"))  # exports to ONNX if needed
    env = torch_blocked_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked by this test" in blocked.stderr  # the blocker works
    proc = subprocess.run([sys.executable, "-m", "ganserve.cli", "generate", *flags, "--outdir",
                           str(tmp_path / "no-torch")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "torch-importable").iterdir())
    assert names == [f"seed{s:04d}.png" for s in range(21)]
    assert sorted(p.name for p in (tmp_path / "no-torch").iterdir()) == names
    for name in names:
        assert (tmp_path / "no-torch" / name).read_bytes() == (tmp_path / "torch-importable" / name).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--seeds", "3-1"], "runs backwards"),
    (["--seeds", "abc"], "bad seed 'abc'"),
    (["--seeds", "1", "--psi", "nan"], "psi"),
    (["--seeds", "1", "--mix-seed", "2", "--mix-layers", "99"], "out of range"),
    (["--seeds", "1", "--batch-size", "0"], "batch size"),
    (["--seeds", "1", "--device", "tpu"], "device must be one of"),
])
def test_generate_reports_bad_input_in_one_line(model_dirs, tmp_path, args, message):
    proc = ganserve("generate", "--model", model_dirs["stylegan"], "--outdir", str(tmp_path), *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_mixing_on_a_progan_model_is_a_clear_error(model_dirs, tmp_path):
    proc = ganserve("generate", "--model", model_dirs["progan"], "--seeds", "1", "--mix-seed", "2",
                    "--outdir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "style mixing needs a StyleGAN" in proc.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    proc = ganserve("generate", "--model", str(tmp_path / "nope"), "--seeds", "1", "--outdir", str(tmp_path),
                    check=False)
    assert proc.returncode == 2 and "no model directory or bundled model named" in proc.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"\n{ci}\n" in readme
    assert ci.startswith("pip install torch==2.13.0 && ")  # torch pinned first, before the project's dependencies


# -- the bundled default model: generate, eval and export take it when --model is left out, as serve does ----------
def _zoo_files() -> set[Path]:
    return set((ROOT / "ganserve" / "zoo").rglob("*")) if (ROOT / "ganserve" / "zoo").is_dir() else set()


def test_every_subcommands_help_renders():
    """argparse expands % in help texts only when --help is asked for; a stray % fails there and nowhere else."""
    import argparse

    from ganserve.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "generate", "train", "eval", "export"} <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert text.startswith(f"usage: ganserve {name}"), name


@pytest.mark.parametrize("command", ["generate", "eval", "export"])
def test_model_is_optional_and_its_help_names_the_default(command):
    help_text = " ".join(ganserve(command, "--help").stdout.split())
    assert "[--model MODEL]" in help_text  # optional in the usage line
    assert f"(default: the bundled {DEFAULT_MODEL}, as for `ganserve serve`)" in help_text


def test_generate_without_a_model_writes_the_bundled_default_models_images(tmp_path):
    flags = ["--seeds", "0-1", "--device", "cpu", "--backend", "torch", "--quiet"]
    ganserve("generate", *flags, "--outdir", str(tmp_path / "default"))
    ganserve("generate", *flags, "--model", DEFAULT_MODEL, "--outdir", str(tmp_path / "named"))
    names = sorted(p.name for p in (tmp_path / "default").iterdir())
    assert names == ["seed0000.png", "seed0001.png"]
    for name in names:
        got = np.asarray(Image.open(tmp_path / "default" / name))
        assert got.shape == (64, 64, 3) and np.array_equal(got, np.asarray(Image.open(tmp_path / "named" / name)))


@pytest.mark.slow
def test_eval_without_a_model_scores_the_bundled_default_and_still_needs_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    flags = ["--data", str(data), "--num", "8", "--batch-size", "8", "--device", "cpu", "--json"]
    default = json.loads(ganserve("eval", *flags).stdout)
    assert default == json.loads(ganserve("eval", *flags, "--model", DEFAULT_MODEL).stdout)
    assert default["num"] == 8 and default["fake"]["avg"] > 0
    proc = ganserve("eval", "--num", "8", check=False)
    assert proc.returncode == 2 and "--data" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_export_without_a_model_exports_the_bundled_default_and_writes_only_where_told(tmp_path):
    """Without --out the export would go next to the bundled model, inside the package: this one goes to --out."""
    before = _zoo_files()
    out = tmp_path / "export"
    proc = ganserve("export", "--max-batch", "2", "--out", str(out), "--quiet")
    assert proc.stdout.strip() == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_sha256"] == weights_sha256(resolve_model(DEFAULT_MODEL))
    assert _zoo_files() == before


def test_without_a_model_and_no_bundled_one_generate_says_what_to_do(tmp_path, monkeypatch, capsys):
    import ganserve.models.weights as weights
    from ganserve.cli import main

    monkeypatch.setattr(weights, "ZOO_DIR", tmp_path / "no-zoo")  # an installation without bundled models
    assert main(["generate", "--seeds", "1", "--outdir", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bundles no model" in err and "ganserve init" in err
    assert not (tmp_path / "out").exists()
