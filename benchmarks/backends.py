"""Images per second of each inference backend at several batch sizes, for one or more model directories.

Owns the measurement (warm-up, then rounds in which the backends take turns call by call at each batch size, so that
a noisy shared machine slows all of them alike; ratios to eager torch are taken within each round) and the output.

    python benchmarks/backends.py --model MODEL_DIR [--model MODEL_DIR ...] [--backends torch,onnxruntime,compile]
        [--batch-sizes 1,8,32,64] [--rounds 3] [--device auto] [--out benchmarks/results] [--name backends_cpu]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ganserve.devices import keep_freed_memory, resolve_device
from ganserve.errors import BackendUnavailable
from ganserve.inference.backend import Backend
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_specs
from ganserve.models.weights import resolve_model

DEFAULT_BACKENDS = ("torch", "onnxruntime", "compile", "tensorrt")


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info = {"cpu": cpu, "cores_available": cores, "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "os": platform.platform()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(backends: dict[str, Backend], specs, min_seconds: float) -> dict[str, float]:
    """Images per second of each backend's run() on the same batch, the backends taking turns call by call (so that
    a burst of load from elsewhere hits them alike) until each has run for at least `min_seconds`."""
    inputs = {name: b.prepare(specs) for name, b in backends.items()}
    spent = dict.fromkeys(backends, 0.0)
    runs = dict.fromkeys(backends, 0)
    while min(spent.values()) < min_seconds:
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.run(inputs[name])
            _sync(backend.device)
            spent[name] += time.perf_counter() - start
            runs[name] += 1
    return {name: len(specs) * runs[name] / spent[name] for name in backends}


def bench_model(model: str, names: list[str], sizes: list[int], rounds: int, device: str, min_seconds: float,
                say, threads: int | None = None) -> tuple[list[dict], dict]:
    path = resolve_model(model)
    backends: dict[str, Backend] = {}
    setup: dict[str, float | str] = {}
    for name in names:
        start = time.perf_counter()
        try:
            options = {"threads": threads} if name == "onnxruntime" and threads else {}
            backends[name] = load_backend(path, name, device, **options)
        except BackendUnavailable as e:
            say(f"  {name}: skipped ({e})")
            setup[name] = f"unavailable: {e}"
            continue
        config = backends[name].config
        say(f"  {name}: loaded in {time.perf_counter() - start:.1f}s ({backends[name].describe()}); warming up")
        start = time.perf_counter()
        for size in sizes:  # first calls compile graphs, allocate arenas, capture CUDA graphs...
            backends[name].run(backends[name].prepare(make_specs(config, list(range(size)))))
        _sync(backends[name].device)
        setup[name] = round(time.perf_counter() - start, 2)
        say(f"  {name}: warm-up {setup[name]}s")
    if not backends:
        raise SystemExit(f"no backend could run for {model}")
    config = next(iter(backends.values())).config
    cells: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for size in sizes:
            specs = make_specs(config, list(range(1000 * r, 1000 * r + size)), psi=0.7)
            for name, rate in time_interleaved(backends, specs, min_seconds).items():
                cells.setdefault((name, size), []).append(rate)
            line = "  ".join(f"{n} {cells[(n, size)][-1]:7.1f}" for n in backends)
            say(f"  round {r + 1}/{rounds} batch {size:3d}: {line}  img/s")
    rows = []
    for (name, size), rates in cells.items():
        ratios = [a / b for a, b in zip(rates, cells[("torch", size)])] if ("torch", size) in cells else []
        rows.append({
            "model": Path(model).name, "arch": config.arch, "resolution": config.resolution,
            "backend": name, "device": str(backends[name].device), "batch_size": size,
            "images_per_s": round(statistics.median(rates), 2),
            "min_images_per_s": round(min(rates), 2), "max_images_per_s": round(max(rates), 2),
            "ratio_vs_torch": round(statistics.median(ratios), 2) if ratios else "",
            "rounds": len(rates), "describe": backends[name].describe(),
        })
    return rows, setup


def markdown(rows: list[dict], setups: dict, info: dict, command: str) -> str:
    out = ["# Backend throughput", "", f"Command: `{command}`", "",
           "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
           "Images/s (median of the rounds; × = median ratio to eager torch within the same round), "
           "timing `backend.run` on prepared batches (psi 0.7, constant noise), backends taking turns call by call.",
           ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        names = list(dict.fromkeys(r["backend"] for r in mrows))
        sizes = sorted({r["batch_size"] for r in mrows})
        first = mrows[0]
        out += [f"## {model}: {first['arch']} {first['resolution']}x{first['resolution']} on {first['device']}", ""]
        out += ["| batch | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for size in sizes:
            cells = []
            for name in names:
                r = next(x for x in mrows if x["backend"] == name and x["batch_size"] == size)
                ratio = f" ({r['ratio_vs_torch']:.2f}×)" if r["ratio_vs_torch"] != "" and name != "torch" else ""
                cells.append(f"{r['images_per_s']:.1f}{ratio}")
            out.append(f"| {size} | " + " | ".join(cells) + " |")
        out += ["", "Backends: " + "; ".join(f"{r['backend']} = {r['describe']}" for r in mrows
                                             if r["batch_size"] == sizes[0]),
                "Load + warm-up (s): " + ", ".join(f"{k} {v}" for k, v in setups[model].items()), ""]
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mrows = [r for r in rows if r["model"] == model]
        for name in dict.fromkeys(r["backend"] for r in mrows):
            pts = sorted((r["batch_size"], r["images_per_s"]) for r in mrows if r["backend"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        first = mrows[0]
        ax.set_title(f"{first['arch']} {first['resolution']}x{first['resolution']} ({first['device']})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="model directory or bundled name (repeatable)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="comma list; unavailable ones are skipped")
    p.add_argument("--batch-sizes", default="1,8,32,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.5, help="least time per measurement (small batches repeat)")
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch threads and ONNX Runtime intra-op threads on the CPU (default 1, as a server worker)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", help="file name stem (default backends_DEVICE)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if "torch" in names:  # the reference: measured first in every round
        names.remove("torch")
    names.insert(0, "torch")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as an inference worker does (GeneratorWorker.setup)
        torch.set_num_threads(args.cpu_threads)
    info = machine()
    say = lambda line: print(line, flush=True)  # noqa: E731
    say("machine: " + json.dumps(info))
    rows, setups = [], {}
    for model in args.model:
        say(f"model {model}")
        model_rows, setups[Path(model).name] = bench_model(model, names, sizes, args.rounds, str(device),
                                                           args.min_seconds, say, args.cpu_threads)
        rows += model_rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"backends_{device.type}"
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python benchmarks/backends.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"{stem}.md").write_text(markdown(rows, setups, info, command))
    (out / f"{stem}_machine.json").write_text(json.dumps(info, indent=2) + "\n")
    try:
        plot(rows, out / f"{stem}.png")
    except ImportError:
        say("matplotlib is not installed (pip install 'ganserve[bench]'): no plot")
    say(f"wrote {out / stem}.csv/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
