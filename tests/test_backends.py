"""The backend interface: load_backend and `auto`, torch.compile parity, and the GPU backends (skipped without one)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ganserve.errors import BackendUnavailable
from ganserve.inference.compiled import BUCKETS, bucket_for, pad_rows
from ganserve.inference.registry import AUTO_ORDER, BACKENDS, load_backend
from ganserve.inference.sampling import make_specs
from ganserve.inference.torch_backend import TorchBackend

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def mixed_specs(config, n: int):
    """n specs cycling through the parameters a server sees side by side in one batch."""
    params = [{}, {"psi": 0.7}, {"psi": 0.0}]
    if config.supports_mixing:
        params += [{"mix_seed": 5, "mix_layers": "coarse"}, {"noise": "random", "psi": 0.5}]
    return [make_specs(config, [100 + i], **params[i % len(params)])[0] for i in range(n)]


def assert_close_images(got: np.ndarray, want: np.ndarray, equal_fraction: float, max_diff: int = 255):
    assert got.shape == want.shape and got.dtype == want.dtype == np.uint8
    assert (got == want).mean() >= equal_fraction
    assert np.abs(got.astype(int) - want).max() <= max_diff


# -- the interface ---------------------------------------------------------------------------------------------------
def test_every_backend_name_is_registered_and_unknown_names_are_refused(model_dirs):
    assert set(BACKENDS) == {"torch", "compile", "onnxruntime", "tensorrt"}
    with pytest.raises(ValueError, match="backend must be one of auto, torch"):
        load_backend(model_dirs["stylegan"], "tvm", "cpu")


def test_auto_on_cpu_exports_once_into_the_user_cache_and_reuses_it(model_dirs, tmp_path, monkeypatch):
    """`auto` on the CPU runs ONNX Runtime: on first use it exports the model into the per-user cache (keyed by the
    weights), never next to the model; later loads reuse that export, and an export next to the model wins."""
    import shutil

    from ganserve.export.artifacts import default_export_dir
    from ganserve.export.onnx_export import export_onnx

    monkeypatch.setenv("GANSERVE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(model_dirs["progan"], model)
    first = load_backend(model, "auto", "cpu")
    cached = default_export_dir(model, "onnx", cached=True)
    assert first.name == "onnxruntime" and first.auto_skipped == [] and first.export_dir == cached
    assert not (model / "onnx").exists() and cached.is_relative_to(tmp_path / "cache")
    made = (cached / "manifest.json").stat().st_mtime_ns
    assert load_backend(model, "auto", "cpu").export_dir == cached
    assert (cached / "manifest.json").stat().st_mtime_ns == made  # reused, not made again
    specs = make_specs(first.config, list(range(6)))
    torch_images = load_backend(model, "torch", "cpu").generate(specs)
    assert_close_images(first.generate(specs), torch_images, equal_fraction=0.999, max_diff=1)
    assert load_backend(model, "onnxruntime", "cpu").export_dir == cached  # named explicitly: the same export
    export_onnx(model, progress=lambda line: None)  # `ganserve export`: next to the model, which is then preferred
    assert load_backend(model, "auto", "cpu").export_dir == model / "onnx"


def test_processes_starting_together_export_once(model_dirs, tmp_path):
    """Two processes (as a server's workers) loading `auto` at the same time: one exports, the other waits for it."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dirs["stylegan"], model)
    env = {**os.environ, "GANSERVE_CACHE": str(tmp_path / "cache")}
    code = ("import sys; from ganserve.inference import load_backend; "
            "print(load_backend(sys.argv[1], 'auto', 'cpu').name)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(model)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [o[0].strip() for o in outs] == ["onnxruntime", "onnxruntime"], outs
    assert sum(o[1].count("to ONNX once") for o in outs) == 1, [o[1] for o in outs]


def test_tensorrt_on_cpu_says_why_in_one_line(model_dirs):
    with pytest.raises(BackendUnavailable) as e:
        load_backend(model_dirs["stylegan"], "tensorrt", "cpu")
    assert "CUDA" in str(e.value) and "\n" not in str(e.value)


def test_half_precision_eager_on_cpu_is_refused_with_a_reason(model_dirs):
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        TorchBackend(model_dirs["stylegan"], CPU, precision="fp16")


@pytest.mark.parametrize("arch", ["stylegan", "progan"])
def test_bf16_on_cpu_is_an_opt_in_close_to_fp32(model_dirs, arch):
    """precision="bf16" on the CPU runs the synthesis under bfloat16 autocast: the same pictures, not the same bits."""
    fp32 = TorchBackend(model_dirs[arch], CPU)
    bf16 = TorchBackend(model_dirs[arch], CPU, precision="bf16")
    assert fp32.precision == "fp32" and bf16.describe() == "torch (bf16) on cpu"
    specs = make_specs(fp32.config, list(range(8)))
    want, got = fp32.generate(specs).astype(int), bf16.generate(specs).astype(int)
    assert got.shape == want.shape and not np.array_equal(got, want)
    assert np.abs(got - want).mean() < 8


def test_cli_generate_with_an_unavailable_backend_exits_2_with_one_line(model_dirs, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ganserve.cli", "generate", "--model", model_dirs["progan"], "--seeds", "1",
         "--backend", "tensorrt", "--device", "cpu", "--outdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT needs a CUDA GPU" in lines[0], proc.stderr


def test_buckets_and_padding_keep_every_row():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    with pytest.raises(ValueError):
        bucket_for(BUCKETS[-1] + 1)
    from conftest import tiny_config

    from ganserve.inference.sampling import prepare_batch

    config = tiny_config("stylegan")
    inputs = prepare_batch(mixed_specs(config, 5), config, [4, 4, 8, 8, 16, 16])
    padded = pad_rows(inputs, 8)
    assert len(padded) == 8 and np.array_equal(padded.z[:5], inputs.z)
    assert np.array_equal(padded.z[5:], inputs.z[[4] * 3])
    assert all(np.array_equal(a[:5], b) for a, b in zip(padded.noise, inputs.noise))


def test_tensorrt_graph_module_exports_with_a_dynamic_batch_and_matches_synthesis(arch):
    """The part of the TensorRT build that runs without a GPU: the module handed to torch-tensorrt (noise maps
    packed into one input) traced by torch.export with a dynamic batch, then run at another batch size."""
    from conftest import tiny_generator

    from ganserve.export.tensorrt import export_program, pack_noise, synthesis_module

    G = tiny_generator(arch)
    module, examples = synthesis_module(G, fp16=False)
    program = export_program(module, examples, max_batch=16)
    ws = torch.randn(5, G.num_ws, G.config.w_dim)
    noise = [torch.randn(5, 1, r, r) for r in G.noise_resolutions()]
    args = (ws, pack_noise(noise)) if noise else (ws,)
    with torch.no_grad():
        got, want = program.module()(*args), G.synthesis(ws, noise or None)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5


# -- torch.compile (CPU here; CUDA graphs on a GPU) ------------------------------------------------------------------
@pytest.mark.slow
def test_compile_backend_matches_eager(model_dirs):
    """One dynamic-batch graph on CPU: compiled once (about half a minute), then batch 1, 3 and 8 reuse it."""
    eager = TorchBackend(model_dirs["stylegan"], CPU)
    compiled = load_backend(model_dirs["stylegan"], "compile", "cpu")
    specs = mixed_specs(eager.config, 8)
    for n in (3, 8, 1):
        assert_close_images(compiled.generate(specs[:n]), eager.generate(specs[:n]), 0.999, max_diff=1)
    together = compiled.generate(specs)
    assert np.array_equal(together[:1], compiled.generate(specs[:1]))


@needs_cuda
def test_compile_backend_with_cuda_graphs_matches_eager_fp32(model_dirs):
    eager = TorchBackend(model_dirs["stylegan"], torch.device("cuda"), precision="fp32")
    compiled = load_backend(model_dirs["stylegan"], "compile", "cuda", precision="fp32")
    assert compiled.mode == "reduce-overhead"
    specs = mixed_specs(eager.config, 11)
    for n in (1, 3, 8, 11):  # buckets 1, 4, 8, 16: padded rows must not leak into the answer
        assert_close_images(compiled.generate(specs[:n]), eager.generate(specs[:n]), 0.99, max_diff=2)


# -- GPU backends: skipped here, run on a CUDA machine ---------------------------------------------------------------
@needs_cuda
def test_torch_fp16_on_cuda_is_close_to_fp32(model_dirs):
    fp32 = TorchBackend(model_dirs["stylegan"], torch.device("cuda"), precision="fp32")
    fp16 = TorchBackend(model_dirs["stylegan"], torch.device("cuda"))
    assert fp16.precision == "fp16"
    specs = mixed_specs(fp32.config, 8)
    got, want = fp16.generate(specs), fp32.generate(specs)
    assert np.abs(got.astype(int) - want).mean() < 2.0


@needs_cuda
@pytest.mark.skipif(not _ort_has_cuda(), reason="onnxruntime here has no CUDAExecutionProvider (onnxruntime-gpu)")
def test_onnxruntime_cuda_provider_with_io_binding_matches_eager(model_dirs):
    eager = TorchBackend(model_dirs["stylegan"], CPU)
    backend = load_backend(model_dirs["stylegan"], "onnxruntime", "cuda")
    assert backend.synthesis.get_providers()[0] == "CUDAExecutionProvider"
    specs = mixed_specs(eager.config, 8)
    images = backend.run(backend.prepare(specs))
    assert images.device.type == "cuda" and images.dtype == torch.uint8
    assert_close_images(images.cpu().numpy(), eager.generate(specs), 0.99, max_diff=2)


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is None,
                    reason="torch-tensorrt is not installed (pip install 'ganserve[tensorrt]')")
def test_tensorrt_fp16_engines_match_eager_and_are_cached(model_dirs, tmp_path, capfd):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dirs["stylegan"], model)
    eager = TorchBackend(model, CPU)
    backend = load_backend(model, "tensorrt", "cuda")
    assert backend.precision == "fp16" and backend.max_batch_size == 64
    assert backend.export_dir.parent == model / "tensorrt"
    specs = mixed_specs(eager.config, 70)  # above the profile's max batch: split in two
    got, want = backend.generate(specs), eager.generate(specs)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).mean() < 2.0
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in backend.export_dir.iterdir()}
    assert {"mapping.engine", "synthesis.engine", "manifest.json"} <= set(files)
    capfd.readouterr()
    again = load_backend(model, "tensorrt", "cuda")  # the cached engines: loaded as they are, not rebuilt
    assert again.export_dir == backend.export_dir
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in again.export_dir.iterdir()} == files
    assert "building engines" not in capfd.readouterr().err
    assert np.array_equal(again.generate(specs[:5]), got[:5])


@needs_cuda
def test_auto_on_cuda_takes_the_first_ready_backend_and_never_builds_one(model_dirs, tmp_path):
    """On CUDA `auto` tries tensorrt, then onnxruntime, then torch, and builds nothing: with no export next to the
    model that is eager torch (fp16) on the GPU, and the model directory is left as it was."""
    import shutil

    assert AUTO_ORDER["cuda"] == ("tensorrt", "onnxruntime", "torch")
    model = tmp_path / "model"
    shutil.copytree(model_dirs["progan"], model, ignore=shutil.ignore_patterns("onnx*", "tensorrt"))  # weights only
    before = sorted(p.name for p in model.iterdir())
    backend = load_backend(model, "auto", "cuda")
    assert backend.name == "torch" and backend.device.type == "cuda" and backend.precision == "fp16"
    assert [reason.split(":")[0] for reason in backend.auto_skipped] == ["tensorrt", "onnxruntime"]
    assert sorted(p.name for p in model.iterdir()) == before  # no onnx/ or tensorrt/ folder made


@needs_cuda
@pytest.mark.skipif(not _ort_has_cuda(), reason="onnxruntime here has no CUDAExecutionProvider (onnxruntime-gpu)")
def test_auto_on_cuda_takes_a_ready_onnx_export_over_torch(model_dirs, tmp_path):
    """With an ONNX export present (and no TensorRT engines), auto runs it on ONNX Runtime's CUDA provider; it still
    builds no TensorRT engines."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dirs["progan"], model, ignore=shutil.ignore_patterns("onnx*", "tensorrt"))  # weights only
    load_backend(model, "onnxruntime", "cpu")  # named explicitly: exports next to the model (fp32, any device)
    backend = load_backend(model, "auto", "cuda")
    assert backend.name == "onnxruntime" and backend.device.type == "cuda"
    assert backend.synthesis.get_providers()[0] == "CUDAExecutionProvider"
    assert [reason.split(":")[0] for reason in backend.auto_skipped] == ["tensorrt"]
    assert not (model / "tensorrt").exists()
