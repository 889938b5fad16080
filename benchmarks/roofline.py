"""How close a generator runs to what this CPU can compute: its floating-point operations per image, the rate each
backend reaches on them, each convolution on its own, and the rate of a large matrix product on the same core.

Everything runs on one thread (as a server worker does on the CPU), so the figures are per core. The FLOPs are
counted by torch.utils.flop_counter on the float32 graph (a multiply-add is two). The reference is a large 3x3
convolution (256 channels at 32x32) on the kernel the model uses, oneDNN: the practical peak of one core; 1024^3
GEMMs in float32 and bfloat16 stand beside it (bf16 is only an opt-in precision here). Each convolution of the model
is timed alone at the batch size, on the same kernel.

    python benchmarks/roofline.py [--model stylegan-emoji64] [--batch-size 32] [--seconds 2] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import machine, time_interleaved  # noqa: E402  (benchmarks/backends.py, beside this file)

import ganserve.models.layers as layers  # noqa: E402
from ganserve.errors import BackendUnavailable  # noqa: E402
from ganserve.inference.registry import load_backend  # noqa: E402
from ganserve.inference.sampling import batch_noise, batch_styles, make_specs, prepare_batch  # noqa: E402
from ganserve.models.weights import load_model, resolve_model  # noqa: E402

BIG_CONV = "fp32 3x3 convolution, 256 -> 256 channels at 32x32"


def count_flops(G) -> tuple[float, list[dict]]:
    """FLOPs per image of mapping + synthesis, and each convolution (module, input shape, FLOPs per image).

    The counter sees F.conv2d but not the oneDNN call the model makes on the CPU, so oneDNN is switched off while
    counting (the same arithmetic either way)."""
    convs: list[dict] = []

    def record(module, args, out):
        x = args[0]
        blur = isinstance(module, layers.Blur)
        k = (module.kernel if blur else module.weight).shape[-1]
        flops = 2 * out[0].numel() * (1 if blur else x.shape[1]) * k * k
        convs.append({"kind": "blur" if blur else f"conv{k}x{k}", "in": x.shape[1], "out": out.shape[1],
                      "res": out.shape[-1], "flops": flops, "module": module})

    hooks = [m.register_forward_hook(record) for m in G.modules()
             if isinstance(m, (layers.EqualizedConv2d, layers.Blur))]
    inputs = prepare_batch(make_specs(G.config, [0]), G.config, G.noise_resolutions())
    onednn, layers.ONEDNN = layers.ONEDNN, False
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            ws = batch_styles(G.mapping, G.w_avg, inputs, "cpu")
            G.synthesis(ws, batch_noise(inputs, G.const_noise(), "cpu"))
    finally:
        layers.ONEDNN = onednn
        for h in hooks:
            h.remove()
    return counter.get_total_flops(), convs


def best_rate(fn, flops: float, seconds: float) -> float:
    """GFLOP/s of fn's fastest fifth of calls over `seconds` (the machine is shared: the fastest calls are the ones
    nothing else interrupted)."""
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return flops / statistics.mean(times[:max(1, len(times) // 5)]) / 1e9


def gemm_rate(dtype: torch.dtype, seconds: float, n: int = 1024) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    with torch.inference_mode():
        return best_rate(lambda: torch.mm(a, b), 2 * n ** 3, seconds)


def big_conv_rate(seconds: float, batch: int = 32) -> float:
    """A 3x3 convolution of 256 channels at 32x32, float32 on the model's kernel: what one core does on a large one."""
    x, w = torch.randn(batch, 256, 32, 32), torch.randn(256, 256, 3, 3)
    with torch.inference_mode():
        return best_rate(lambda: layers.conv2d(x, w, padding=1), 2 * batch * 32 * 32 * 256 * 256 * 9, seconds)


def conv_rows(convs: list[dict], batch: int, seconds: float) -> list[dict]:
    """Each convolution alone at `batch`, run by its own module (the model's kernel)."""
    rows = []
    for c in convs:
        x = torch.randn(batch, c["in"], c["res"], c["res"])
        with torch.inference_mode():
            rate = best_rate(lambda x=x, m=c["module"]: m(x), c["flops"] * batch, seconds)
        rows.append({**{k: c[k] for k in ("kind", "res", "in", "out")}, "mflop_per_image": c["flops"] / 1e6,
                     "gflop_per_s": rate, "ms_per_image": c["flops"] / rate / 1e6})
    return rows


def markdown(model: str, batch: int, total: float, convs: list[dict], whole: dict, peaks: dict, info: dict,
             command: str) -> str:
    peak = peaks[BIG_CONV]
    conv_flops = sum(c["mflop_per_image"] for c in convs) * 1e6
    conv_ms = sum(c["ms_per_image"] for c in convs)
    lines = [f"# Roofline on the CPU: {model}, batch {batch}, one thread", "",
             f"`{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             f"{total / 1e9:.3f} GFLOP per image (mapping and synthesis; a multiply-add counts two), "
             f"{conv_flops / total:.1%} of it in convolutions. The whole-generator rates are this count over the "
             "time, for every backend: the ONNX export folds nearest upsampling into its convolution and does fewer "
             "(4 products per output in those layers, not 9).", "",
             "| what | GFLOP/s on one core | of the large convolution |", "| --- | ---: | ---: |"]
    for name, rate in peaks.items():
        lines.append(f"| {name} | {rate:.1f} | {rate / peak:.2f} |")
    for name, (rate, ms) in whole.items():
        lines.append(f"| whole generator, {name} ({ms:.2f} ms per image) | {rate:.1f} | {rate / peak:.2f} |")
    lines.append(f"| the convolutions alone, summed ({conv_ms:.2f} ms per image) | "
                 f"{conv_flops / conv_ms / 1e6:.1f} | {conv_flops / conv_ms / 1e6 / peak:.2f} |")
    lines += ["", "Each convolution alone (the model's kernel, float32):", "",
              "| layer | at | channels in -> out | MFLOP per image | GFLOP/s | ms per image |",
              "| --- | ---: | --- | ---: | ---: | ---: |"]
    for c in convs:
        lines.append(f"| {c['kind']} | {c['res']}x{c['res']} | {c['in']} -> {c['out']} | {c['mflop_per_image']:.1f} | "
                     f"{c['gflop_per_s']:.1f} | {c['ms_per_image']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="stylegan-emoji64")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    p.add_argument("--out", type=Path, help="write the markdown table here too")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    path = resolve_model(args.model)
    G = load_model(path, "cpu")
    total, convs = count_flops(G)
    print(f"{args.model}: {total / 1e9:.3f} GFLOP per image, {len(convs)} convolutions", flush=True)
    peaks = {BIG_CONV: big_conv_rate(args.seconds), "fp32 GEMM 1024^3": gemm_rate(torch.float32, args.seconds),
             "bf16 GEMM 1024^3": gemm_rate(torch.bfloat16, args.seconds)}
    print("  " + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)
    backends = {}
    for name in ("torch", "onnxruntime"):
        try:
            backends[name] = load_backend(path, name, "cpu", **({"threads": 1} if name == "onnxruntime" else {}))
        except BackendUnavailable as e:
            print(f"  {name}: skipped ({e})")
    specs = make_specs(backends["torch"].config, list(range(args.batch_size)))
    time_interleaved(backends, specs, 0.5)  # warm-up
    rates = time_interleaved(backends, specs, args.seconds * 2)
    whole = {name: (img_s * total / 1e9, 1000 / img_s) for name, img_s in rates.items()}
    for name, (rate, ms) in whole.items():
        print(f"  whole generator, {name}: {rate:.1f} GFLOP/s ({ms:.2f} ms per image)", flush=True)
    rows = conv_rows(convs, args.batch_size, args.seconds / 4)
    for r in rows:
        print(f"  {r['kind']} {r['res']}x{r['res']} {r['in']}->{r['out']}: {r['gflop_per_s']:.1f} GFLOP/s", flush=True)
    info = {k: v for k, v in machine().items() if k != "torch_threads"}
    command = "python benchmarks/roofline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(Path(args.model).name, args.batch_size, total, rows, whole, peaks, info, command.strip())
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
