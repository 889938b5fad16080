"""The backends by name, and load_backend() with the `auto` rule.

A backend's module is imported when the backend is made, and imports its runtime (torch, torch.compile,
onnxruntime, tensorrt) then: ONNX Runtime on the CPU runs without torch, and a process that uses it starts about a
second sooner.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ganserve.devices import resolve_device
from ganserve.errors import BackendUnavailable, ExportError, UsageError
from ganserve.inference.backend import Backend
from ganserve.models.weights import resolve_model

# name -> "module:class"
BACKENDS: dict[str, str] = {
    "torch": "ganserve.inference.torch_backend:TorchBackend",
    "compile": "ganserve.inference.compiled:CompileBackend",
    "onnxruntime": "ganserve.inference.ort:OnnxRuntimeBackend",
    "tensorrt": "ganserve.inference.tensorrt:TensorRTBackend",
}
BACKEND_CHOICES = ("auto", *BACKENDS)
TORCH_BACKENDS = ("torch", "compile")  # the backends that run on torch's CPU threads
# `auto`: the first of these that runs here, fastest first. On the CPU that is ONNX Runtime, exported on first use
# into the per-user cache (keyed by the weights and the exporter version) and reused after; on CUDA an ONNX export or
# TensorRT engines only when they exist already (`ganserve export` makes them), else torch. torch.compile is left
# out: it compiles for about half a minute at every start.
AUTO_ORDER = {"cuda": ("tensorrt", "onnxruntime", "torch"), "cpu": ("onnxruntime", "torch")}
AUTO_OPTIONS = {
    "cuda": {"tensorrt": {"build": False}, "onnxruntime": {"build": False}},
    "cpu": {"onnxruntime": {"build": True, "cached": True}},
}


def load_backend(model: str | Path, backend: str = "torch", device: str = "auto", **options) -> Backend:
    """The named backend for a model directory (or bundled model name, or export folder) on a device.

    device 'auto': CUDA if present. backend 'auto': the first backend of AUTO_ORDER that can run here (with
    AUTO_OPTIONS); each one that cannot is skipped (its reason is kept in `auto_skipped`). Raises BackendUnavailable
    with a one-line reason. An explicitly named onnxruntime/tensorrt backend exports its artifact next to the model
    when it is missing.
    """
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    options = {k: v for k, v in options.items() if v is not None}
    if "precision" in options:  # a choice of the PyTorch backends: with auto, it means torch
        backend = "torch" if backend == "auto" else backend
        if backend not in ("torch", "compile", "tensorrt"):
            raise UsageError(f"precision is an option of the torch, compile and tensorrt backends; {backend} runs "
                             "the precision of its export (ganserve export --fp16)")
        if backend == "tensorrt" and options["precision"] not in ("fp16", "fp32"):
            raise UsageError(f"TensorRT engines are built in fp16 or fp32, not {options['precision']}")
    dev = resolve_device(device)
    path = _resolve(model)
    if backend != "auto":
        return backend_class(backend)(path, dev, **options)
    skipped: list[str] = []
    kind = "cuda" if dev.type == "cuda" else "cpu"
    for name in AUTO_ORDER[kind]:
        try:
            chosen = backend_class(name)(path, dev, **AUTO_OPTIONS[kind].get(name, {}))
        except (BackendUnavailable, ExportError) as e:
            skipped.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        chosen.auto_skipped = skipped
        return chosen
    raise BackendUnavailable("no backend can run here: " + "; ".join(skipped))


def backend_class(name: str) -> type[Backend]:
    """The class of a backend named in BACKENDS (its module imported now)."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def _resolve(model: str | Path) -> Path:
    """A model directory, a bundled model's directory, or an export folder (holding manifest.json) as it is."""
    from ganserve.export.artifacts import is_export_dir

    if is_export_dir(model):
        return Path(model)
    return resolve_model(model)
