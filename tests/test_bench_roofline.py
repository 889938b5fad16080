"""benchmarks/roofline.py and onnx_ab.py run end to end on a tiny model: FLOPs counted per convolution as the shapes
say, every backend's whole-generator row and every convolution's row; two exports timed and their pixels compared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import tiny_generator

from ganserve.export.onnx_export import export_onnx
from ganserve.models.weights import save_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_roofline_counts_each_convolution_and_times_both_backends(tmp_path):
    G = tiny_generator("stylegan")
    model = save_model(G, tmp_path / "tiny")
    out = tmp_path / "roofline.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "roofline.py"), "--model", str(model), "--batch-size", "4",
                    "--seconds", "0.05", "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    text = out.read_text()
    assert "| whole generator, torch (" in text and "| whole generator, onnxruntime (" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| conv", "| blur"))]
    channels = G.config.channels
    expected = []  # (kind, resolution, in, out) of every convolution in the order the synthesis network runs them
    res = 4
    expected.append(("conv3x3", res, channels(4), channels(4)))
    while res < G.config.resolution:
        cin, cout, res = channels(res), channels(2 * res), 2 * res
        expected += [("conv3x3", res, cin, cout), ("blur", res, cout, cout), ("conv3x3", res, cout, cout)]
    expected.append(("conv1x1", res, channels(res), G.config.img_channels))
    assert [(r[0].strip(), int(r[1].split("x")[0]), *map(int, r[2].split("->"))) for r in rows] == expected
    for (kind, r, cin, cout), row in zip(expected, rows):
        k = 1 if kind == "conv1x1" else 3
        flops = 2 * r * r * cout * k * k * (1 if kind == "blur" else cin)
        assert abs(float(row[3]) - flops / 1e6) <= 0.051  # MFLOP per image, printed to one decimal
        assert float(row[4]) > 0


def test_onnx_ab_times_two_exports_and_compares_their_pixels(tmp_path):
    model = save_model(tiny_generator("stylegan"), tmp_path / "tiny")
    a, b = (export_onnx(model, tmp_path / name, max_batch=4, progress=lambda line: None) for name in ("a", "b"))
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "onnx_ab.py"), "--a", str(a), "--b", str(b),
                           "--batch-sizes", "1,3", "--rounds", "2"], check=True, capture_output=True, text=True,
                          timeout=600)
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0].strip() for r in rows[1:]] == ["1", "3"]  # after the header
    for r in rows[1:]:
        assert float(r[1]) > 0 and float(r[2]) > 0
        assert r[4].strip() == "100.00000%" and r[5].strip() == "0"  # the same exporter: the same pixels
