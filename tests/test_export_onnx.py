"""ONNX export and the onnxruntime backend: graphs, manifest, parity with eager PyTorch, fresh-process loading."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_generator

from ganserve.errors import BackendUnavailable
from ganserve.export.artifacts import read_manifest
from ganserve.export.onnx_export import MAPPING_FILE, SYNTHESIS_FILE, check_graph, export_onnx
from ganserve.inference.ort import OnnxRuntimeBackend
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import batch_noise, batch_styles, make_specs
from ganserve.inference.torch_backend import TorchBackend
from ganserve.models.weights import save_model, weights_sha256

CPU = torch.device("cpu")
MAX_BATCH = 8
# 32x32 rather than conftest's 16x16: one uint8 value off by one in a 16x16 image is already 0.13% of it, so the
# 99.9% criterion would allow no rounding difference at all for a batch of one.
RES = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict]:
    """Per architecture: the model directory, its default uint8 export (MODEL_DIR/onnx) and a float-output export."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for arch in ("stylegan", "progan"):
        model = save_model(tiny_generator(arch, resolution=RES), root / arch)
        out[arch] = {
            "model": model,
            "onnx": export_onnx(model, max_batch=MAX_BATCH, progress=lambda line: None),
            "float": export_onnx(model, root / f"{arch}-float", max_batch=MAX_BATCH, output="float",
                                 progress=lambda line: None),
        }
    return out


@pytest.fixture(scope="module")
def backends(exported) -> dict[str, dict]:
    return {
        arch: {
            "torch": TorchBackend(d["model"], CPU),
            "onnx": OnnxRuntimeBackend(d["onnx"], CPU),
            "float": OnnxRuntimeBackend(d["float"], CPU),
        }
        for arch, d in exported.items()
    }


CASES = [(arch, n, psi, mix) for arch in ("stylegan", "progan") for n in (1, 3, 8) for psi in (0.0, 0.7, 1.0)
         for mix in ((False, True) if arch == "stylegan" else (False,))]


@pytest.mark.parametrize("arch, n, psi, mix", CASES)
def test_onnxruntime_matches_eager_pytorch(backends, arch, n, psi, mix):
    b = backends[arch]
    params = {"psi": psi, **({"mix_seed": 77, "mix_layers": "coarse"} if mix else {})}
    specs = make_specs(b["torch"].config, list(range(100, 100 + n)), **params)
    inputs = b["torch"].prepare(specs)
    G = b["torch"].G
    with torch.inference_mode():
        reference = G.synthesis(batch_styles(G.mapping, G.w_avg, inputs, CPU))
        floats = b["float"].synthesize(b["float"].styles(inputs))
    assert floats.shape == reference.shape
    assert (floats - reference).abs().max().item() <= 1e-4
    eager, onnx_images = b["torch"].run(inputs).numpy(), b["onnx"].run(inputs).numpy()
    assert onnx_images.dtype == np.uint8 and onnx_images.shape == eager.shape == (n, RES, RES, 3)
    assert (onnx_images == eager).mean() >= 0.999
    assert np.abs(onnx_images.astype(int) - eager).max() <= 1


def test_onnxruntime_matches_eager_with_random_noise_rows(backends):
    b = backends["stylegan"]
    config = b["torch"].config
    specs = make_specs(config, [1, 2, 3], noise="random", psi=0.7) + make_specs(config, [4, 5], mix_seed=9)
    inputs = b["torch"].prepare(specs)
    G = b["torch"].G
    with torch.inference_mode():
        noise = batch_noise(inputs, G.const_noise(), CPU)
        reference = G.synthesis(batch_styles(G.mapping, G.w_avg, inputs, CPU), noise)
        # ONNX Runtime on the CPU keeps its buffers as numpy arrays: device None makes the noise in numpy
        floats = b["float"].synthesize(b["float"].styles(inputs), batch_noise(inputs, b["float"].const_noise, None))
    assert (floats - reference).abs().max().item() <= 1e-4
    assert (b["onnx"].run(inputs).numpy() == b["torch"].run(inputs).numpy()).mean() >= 0.999
    const = b["onnx"].run(b["onnx"].prepare(make_specs(config, [1, 2, 3], psi=0.7))).numpy()
    assert not np.array_equal(b["onnx"].run(inputs).numpy()[:3], const)  # the noise input is really used


def test_onnx_images_do_not_depend_on_batch_size_or_neighbours(backends, arch):
    backend = backends[arch]["onnx"]
    specs = make_specs(backend.config, list(range(20)), psi=0.5)
    together = backend.generate(specs)
    assert np.array_equal(together, np.concatenate([backend.generate([s]) for s in specs]))
    assert np.array_equal(together, backend.generate(specs, batch_size=3))


def test_graphs_have_a_dynamic_batch_axis_and_no_random_ops(exported, arch):
    for name in (MAPPING_FILE, SYNTHESIS_FILE):
        path = exported[arch]["onnx"] / name
        ops = check_graph(path)  # onnx.checker, full check
        assert not [op for op in ops if op.startswith("Random") or op in ("Bernoulli", "Multinomial")]
        model = onnx.load(str(path))
        for value in [*model.graph.input, *model.graph.output]:
            batch = value.type.tensor_type.shape.dim[0]
            assert batch.dim_param and not batch.dim_value, f"{name}:{value.name} has a fixed batch size"
    assert "Conv" in ops  # the synthesis graph's, checked last:
    assert "ConvTranspose" in ops and "Resize" not in ops  # nearest upsampling folded into its 3x3 convolution
    if arch == "stylegan":  # AdaIN's normalisation and style in one node per layer
        assert "InstanceNormalization" in ops and "Pow" not in ops
    # No spatial convolution carries a computed zero bias (which keeps ONNX Runtime's CPU provider off NCHWc).
    graph = onnx.load(str(exported[arch]["onnx"] / SYNTHESIS_FILE)).graph
    computed = {out for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    spatial = [n for n in convs if np.prod(next(a.ints for a in n.attribute if a.name == "kernel_shape")) > 1]
    assert spatial and all(len(n.input) == 2 or n.input[2] not in computed for n in spatial)
    # Each upsampling is one transposed convolution, except the ProGAN's last, which runs on phase maps
    # (ganserve.models.layers): four 2x2 convolutions for the upsampling, four among the next convolution's terms.
    upsamplings = int(np.log2(RES)) - 2
    assert sum(n.op_type == "ConvTranspose" for n in graph.node) == upsamplings - (arch == "progan")
    if arch == "progan":
        kernels = [tuple(next(a.ints for a in n.attribute if a.name == "kernel_shape")) for n in convs]
        assert kernels.count((2, 2)) == 8


def _conv_model(bias: str) -> onnx.ModelProto:
    """x [1, 16, 8, 8] -> 3x3 Conv with the bias `bias` names ("" for none), and a 1x1 one with a zero bias."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array([16], np.int64))),
        helper.make_node("Cast", ["zero"], ["zero_f"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["zero_f", "n"], ["zero_bias"]),
        helper.make_node("Conv", ["x", "w", bias] if bias else ["x", "w"], ["y"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y", "w1", "zero_bias1"], ["out"], kernel_shape=[1, 1]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero_bias1"),
             numpy_helper.from_array(np.full(16, 0.5, np.float32), "half")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_a_computed_zero_bias_is_dropped_and_the_graph_computes_the_same(tmp_path):
    import onnxruntime as ort

    from ganserve.export.onnx_export import drop_zero_conv_bias

    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    for bias, dropped in (("zero_bias", 1), ("half", 0), ("", 0)):
        path = tmp_path / f"{bias or 'none'}.onnx"
        onnx.save(_conv_model(bias), str(path))
        before = run(path)
        assert drop_zero_conv_bias(path) == dropped
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        conv3, conv1 = [n for n in model.graph.node if n.op_type == "Conv"]
        assert list(conv3.input) == (["x", "w"] if bias in ("zero_bias", "") else ["x", "w", "half"])
        assert list(conv1.input) == ["y", "w1", "zero_bias1"]  # 1x1: left alone
        if dropped:  # what computed the bias is gone
            assert [n.op_type for n in model.graph.node] == ["Conv", "Conv"]
        np.testing.assert_array_equal(run(path), before)


def test_manifest_describes_the_artifact(exported, arch):
    d = exported[arch]
    manifest = read_manifest(d["onnx"])
    assert d["onnx"] == d["model"] / "onnx"
    assert manifest["artifact"] == "onnx" and manifest["precision"] == "fp32" and manifest["output"] == "uint8"
    assert manifest["weights_sha256"] == weights_sha256(d["model"])
    assert manifest["batch_range"] == [1, MAX_BATCH] and manifest["opset"] >= 17
    for key in ("torch", "onnx", "onnxruntime"):
        assert manifest["versions"][key]
    synthesis = manifest["graphs"]["synthesis"]
    names = [i["name"] for i in synthesis["inputs"]]
    assert names[0] == "ws" and len(names) == 1 + len(manifest["noise_inputs"])
    assert len(manifest["noise_inputs"]) == (8 if arch == "stylegan" else 0)  # one per StyleGAN layer
    assert synthesis["outputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", RES, RES, 3]}]
    assert manifest["graphs"]["mapping"]["inputs"][0]["name"] == "z"
    assert manifest["check"]["uint8_equal_fraction"] >= 0.99


def test_a_request_above_max_batch_is_split_not_failed(backends):
    b = backends["stylegan"]
    sizes = []
    run = b["onnx"].run_host
    b["onnx"].run_host = lambda inputs: sizes.append(len(inputs)) or run(inputs)
    try:
        specs = make_specs(b["onnx"].config, list(range(2 * MAX_BATCH + 3)), psi=0.7)
        images = b["onnx"].generate(specs)
    finally:
        del b["onnx"].run_host
    assert sizes == [MAX_BATCH, MAX_BATCH, 3]
    assert images.shape[0] == len(specs)
    assert (images == b["torch"].generate(specs)).mean() >= 0.999


def test_a_stale_export_is_redone_when_the_weights_change(exported, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(exported["progan"]["model"], model)
    first = OnnxRuntimeBackend(model, CPU)
    assert read_manifest(first.export_dir)["weights_sha256"] == weights_sha256(model)
    G = tiny_generator("progan", seed=5, resolution=RES)
    save_model(G, model)
    second = OnnxRuntimeBackend(model, CPU)
    assert read_manifest(second.export_dir)["weights_sha256"] == weights_sha256(model)
    specs = make_specs(G.config, [1, 2])
    assert np.array_equal(second.generate(specs), TorchBackend(model, CPU).generate(specs))


def test_auto_picks_onnxruntime_on_cpu_once_exported(exported):
    backend = load_backend(exported["progan"]["model"], "auto", "cpu")
    assert backend.name == "onnxruntime" and backend.auto_skipped == []


def test_untrained_model_with_flat_feature_maps_gives_no_nan(tmp_path):
    """Zero noise strengths make the first AdaIN normalise constant maps: only its eps (1e-8) keeps 0 * inf away.
    An optimiser that folds `+ 1e-8` away as `+ 0` turns every pixel into NaN (then 0 after the uint8 cast)."""
    from conftest import tiny_config

    from ganserve.models import build_generator

    torch.manual_seed(0)
    G = build_generator(tiny_config("stylegan"))
    G.estimate_w_avg(256)
    model = save_model(G, tmp_path / "untrained")
    float_export = export_onnx(model, tmp_path / "float", max_batch=4, output="float", progress=lambda line: None)
    backend = OnnxRuntimeBackend(float_export, CPU)
    inputs = backend.prepare(make_specs(G.config, [1, 2, 3]))
    images = backend.synthesize(backend.styles(inputs))
    assert torch.isfinite(images).all()
    assert (backend.run(inputs).numpy() == TorchBackend(model, CPU).run(inputs).numpy()).mean() >= 0.999


def test_fp16_export_is_refused_by_the_cpu_provider_with_a_reason(exported, tmp_path):
    out = export_onnx(exported["progan"]["model"], tmp_path / "fp16", max_batch=4, fp16=True,
                      progress=lambda line: None)
    manifest = read_manifest(out)
    assert manifest["precision"] == "fp16"
    model = onnx.load(str(out / SYNTHESIS_FILE))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # inputs stay float32
    with pytest.raises(BackendUnavailable, match="fp16") as e:
        OnnxRuntimeBackend(out, CPU)
    assert "\n" not in str(e.value)


def ganserve(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganserve.cli", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd)


def test_cli_export_runs_in_a_fresh_process_from_its_folder_alone(exported, tmp_path):
    model = exported["stylegan"]["model"]
    out = tmp_path / "exported"
    proc = ganserve("export", "--model", str(model), "--format", "onnx", "--max-batch", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [s[:5] for s in steps] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert json.loads((out / "manifest.json").read_text())["max_batch"] == 4

    moved = tmp_path / "elsewhere" / "artifact"  # away from the model directory and its weights
    shutil.copytree(out, moved)
    script = (
        "import sys, numpy as np\n"
        "from ganserve.inference import load_backend\n"
        "from ganserve.inference.sampling import make_specs\n"
        "b = load_backend(sys.argv[1], 'onnxruntime', 'cpu')\n"
        "specs = make_specs(b.config, list(range(6)), psi=0.7, mix_seed=3, mix_layers='0-3')\n"
        "np.save(sys.argv[2], b.generate(specs))\n"
        "print(b.describe())\n"
    )
    result = tmp_path / "images.npy"
    proc = subprocess.run([sys.executable, "-c", script, str(moved), str(result)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" in proc.stdout and "CPU" in proc.stdout
    assert "model.safetensors" not in {p.name for p in moved.iterdir()}
    torch_backend = TorchBackend(model, CPU)
    specs = make_specs(torch_backend.config, list(range(6)), psi=0.7, mix_seed=3, mix_layers="0-3")
    assert (np.load(result) == torch_backend.generate(specs)).mean() >= 0.999


def test_cli_tensorrt_export_without_a_gpu_says_why_in_one_line(exported, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the TensorRT tests in test_backends.py cover it")
    proc = ganserve("export", "--model", str(exported["progan"]["model"]), "--format", "tensorrt",
                    "--out", str(tmp_path / "trt"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT needs a CUDA GPU" in lines[0]
