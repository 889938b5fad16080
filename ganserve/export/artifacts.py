"""Exported artifact directories: where they live next to their model, their manifest.json, and staleness checks.

Owns the layout (MODEL_DIR/onnx, MODEL_DIR/onnx-fp16, MODEL_DIR/tensorrt/KEY), the manifest format and the
host-side tensors an artifact needs besides its graphs (w_avg and the constant noise buffers).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganserve.errors import ExportError, UsageError
from ganserve.models.weights import CONFIG_NAME, WEIGHTS_NAME, weights_sha256

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "manifest.json"
EXTRAS_NAME = "latents.safetensors"  # w_avg and the constant noise buffers, used outside the graphs
MANIFEST_FORMAT = "ganserve-export"
MANIFEST_VERSION = 1
FORMATS = ("onnx", "tensorrt")

# The ONNX export (ganserve.export.onnx_export), named here so that running one needs no torch.
DEFAULT_OPSET = 18
EXPORTER_VERSION = 7  # bumped whenever the graphs change: older exports are then redone by the backend
DEFAULT_MAX_BATCH = 64
MAPPING_FILE, SYNTHESIS_FILE = "mapping.onnx", "synthesis.onnx"
TRANSFORM_INPUT = "transform"  # StyleGAN3's synthesis graph: the per-image input transform [batch, 3, 3]
OUTPUTS = ("uint8", "float")


def cache_dir() -> Path:
    """The per-user cache: $GANSERVE_CACHE, else $XDG_CACHE_HOME/ganserve, else ~/.cache/ganserve."""
    if os.environ.get("GANSERVE_CACHE"):
        return Path(os.environ["GANSERVE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganserve"


def default_export_dir(model_dir: str | Path, fmt: str, fp16: bool = False, key: str = "",
                       cached: bool = False) -> Path:
    """Where `ganserve export` writes by default: a folder inside the model directory it came from, or with
    `cached` (or when that directory is read-only) in the per-user cache, CACHE/exports/NAME-SHA, keyed by the
    model's weights.

    onnx -> MODEL_DIR/onnx (fp32) or MODEL_DIR/onnx-fp16; tensorrt -> MODEL_DIR/tensorrt/KEY, KEY naming the GPU,
    the TensorRT version and the precision, because an engine only runs where it was built.
    """
    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    base = Path(model_dir)
    if cached or not os.access(base, os.W_OK):
        base = cache_dir() / "exports" / f"{base.name}-{weights_sha256(base)[:16]}"
    if fmt == "onnx":
        return base / ("onnx-fp16" if fp16 else "onnx")
    return base / "tensorrt" / key


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{directory}: no {MANIFEST_NAME}; not an exported model (run `ganserve export`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if int(manifest.get("version", 0)) > MANIFEST_VERSION:
        raise ExportError(f"{path}: manifest version {manifest['version']} is newer than this ganserve; upgrade")
    return manifest


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def is_current(export_dir: str | Path, model_dir: str | Path, **expected: Any) -> bool:
    """True when `export_dir` holds an artifact made from the weights now in `model_dir` with these manifest values."""
    try:
        manifest = read_manifest(export_dir)
    except ExportError:
        return False
    if (Path(model_dir) / WEIGHTS_NAME).is_file() and manifest.get("weights_sha256") != weights_sha256(model_dir):
        return False
    return all(manifest.get(k) == v for k, v in expected.items())


def versions() -> dict[str, str]:
    """Versions of everything that shaped an artifact (and may be needed to run it)."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "torch_tensorrt", "tensorrt"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # absent or broken optional packages are simply not recorded
            continue
    return out


def base_manifest(model_dir: str | Path, fmt: str, **fields: Any) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "artifact": fmt,
        "source_model": str(Path(model_dir).resolve()),
        "weights_sha256": weights_sha256(model_dir),
        "versions": versions(),
        **fields,
    }


def save_extras(directory: Path, w_avg: torch.Tensor, const_noise: list[torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {"w_avg": w_avg.detach().cpu().float().contiguous()}
    tensors.update({f"noise_const.{i}": n.detach().cpu().float().contiguous() for i, n in enumerate(const_noise)})
    save_file(tensors, str(directory / EXTRAS_NAME))


def load_extras(directory: str | Path, device: torch.device | str | None
                ) -> tuple[torch.Tensor, list[torch.Tensor]] | tuple[np.ndarray, list[np.ndarray]]:
    """(w_avg [w_dim], constant noise buffers [1, 1, r, r] in layer order) of an artifact directory: torch tensors on
    `device`, or numpy arrays with device None."""
    path = str(Path(directory) / EXTRAS_NAME)
    if device is None:
        from safetensors.numpy import load_file

        tensors = load_file(path)
        move = np.ascontiguousarray
    else:
        from safetensors.torch import load_file

        tensors = load_file(path, device="cpu")
        move = lambda t: t.to(device)  # noqa: E731
    count = sum(1 for k in tensors if k.startswith("noise_const."))
    return move(tensors["w_avg"]), [move(tensors[f"noise_const.{i}"]) for i in range(count)]


def copy_config(model_dir: str | Path, directory: Path) -> None:
    """The artifact keeps its model's config.json, so that it can be served from its own folder alone."""
    shutil.copyfile(Path(model_dir) / CONFIG_NAME, directory / CONFIG_NAME)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
