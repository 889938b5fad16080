"""Servable model directories: config.json + model.safetensors (generator weights, w_avg, noise buffers).

Owns saving (atomic, per file), loading without pickle, the weights' sha256, and finding bundled models by name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ganserve.errors import ModelLoadError
from ganserve.files import atomic_write
from ganserve.models.config import ModelConfig

if TYPE_CHECKING:  # torch is imported where weights are read or written, not to read a config or find a model
    import torch

    from ganserve.models.generator import ProgressiveGenerator

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
DEFAULT_MODEL = "progan-emoji64"  # what `ganserve serve` serves first (and by default) when given no model
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def save_model(G: ProgressiveGenerator, directory: str | Path, config: ModelConfig | None = None) -> Path:
    """Write `G` (and `config`, default G's own) as a servable model directory; returns the directory."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config or G.config
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise ModelLoadError(f"{directory}: not a model directory (it does not exist or is not a folder)")
    if not path.is_file():
        raise ModelLoadError(f"{directory}: no {CONFIG_NAME}; a model directory holds {CONFIG_NAME} + {WEIGHTS_NAME}")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: {e}") from None


def state_dict_mismatch(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                        optional: frozenset[str] = frozenset()) -> str:
    """Where `tensors` differ from a network's state dict, key by key ("missing: ...; wrong shape: ..."), or "".
    Keys in `optional` may be missing."""
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    return "; ".join(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                     for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                     if keys)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> ProgressiveGenerator:
    """Build the generator a model directory describes and load its weights (safetensors: no code is executed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ganserve.models import build_generator

    config = load_config(directory)
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME}")
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable weights ({e})") from None
    G = build_generator(config)
    if mismatch := state_dict_mismatch(G.state_dict(), tensors):
        raise ModelLoadError(f"{path} does not match {CONFIG_NAME} ({mismatch})")
    G.load_state_dict(tensors)
    return G.eval().requires_grad_(False).to(device)


def weights_sha256(directory: str | Path) -> str:
    """The sha256 of a model directory's weights file, hashed once per file version (path, mtime and size): loading
    a backend asks for it several times (where its export is cached, and whether an export is current)."""
    path = Path(directory).resolve() / WEIGHTS_NAME
    stat = path.stat()
    return _file_sha256(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_models() -> dict[str, Path]:
    """Names -> directories of the models shipped in ganserve/zoo, the default one (DEFAULT_MODEL) first."""
    if not ZOO_DIR.is_dir():
        return {}
    found = sorted(p for p in ZOO_DIR.iterdir() if (p / CONFIG_NAME).is_file())
    found.sort(key=lambda p: p.name != DEFAULT_MODEL)
    return {p.name: p for p in found}


def resolve_model(name_or_path: str | Path) -> Path:
    """A model directory from a path, or from the name of a bundled model."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    zoo = bundled_models()
    name = str(name_or_path)
    if _NAME.match(name) and name in zoo:
        return zoo[name]
    known = ", ".join(zoo) or "none are installed"
    raise ModelLoadError(f"no model directory or bundled model named {name!r} (bundled models: {known})")
