"""Foreign checkpoints -> ordinary ganserve model directories, without running anything from the file.

Owns `import_checkpoint` (detect, read safely, build, verify, write atomically); the formats live in submodules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from ganserve.errors import ImportRefused
from ganserve.files import staged_dir
from ganserve.models import build_generator
from ganserve.models.importers import nvlabs, rosinality
from ganserve.models.importers.safe_pickle import UnsafePickleError, restricted_load
from ganserve.models.weights import CONFIG_NAME, save_model, state_dict_mismatch

DEFAULT_LICENSE = "the weights keep the licence of their source"

__all__ = ["DEFAULT_LICENSE", "ImportRefused", "import_checkpoint"]


def import_checkpoint(
    path: str | Path,
    out: str | Path,
    network: str | None = None,
    license: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> Path:
    """Turn an NVlabs stylegan2-ada-pytorch / stylegan3 network pickle or a rosinality stylegan2-pytorch checkpoint
    into a model directory at `out`; returns `out`. `network`: G_ema/G (NVlabs), g_ema/g (rosinality); default EMA.

    Raises ImportRefused (a ValueError with a one-line message) for anything that is not such a file, including any
    file that names a global outside the allow-list; then nothing is written.
    """
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise ImportRefused(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ImportRefused(f"{out} already exists and is not empty; pass --force to replace it")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    progress(f"[1/5] read {path.name} ({len(data) / 2**20:.1f} MiB, sha256 {sha256[:16]}...)")
    try:
        if rosinality.is_torch_save(data):
            fmt = rosinality.FORMAT
            ckpt = rosinality.load_checkpoint(data)
            progress("[2/5] loaded a torch.save file with torch.load(weights_only=True)")
            config, tensors, notes = rosinality.read_generator(ckpt, network)
        else:
            fmt = nvlabs.FORMAT
            try:
                obj = restricted_load(data)
            except UnsafePickleError as e:
                raise ImportRefused(str(e)) from None
            progress("[2/5] unpickled with the restricted unpickler (allowed globals only; embedded source code "
                     "ignored)")
            names = {"g_ema": "G_ema", "g": "G"}
            name, net = nvlabs.find_network(obj, names.get(network, network) if network else None)
            config, tensors = nvlabs.read_generator(net, name)
            notes = {"network": name}
    except ImportRefused as e:
        raise ImportRefused(f"{path.name}: {e}") from None
    except Exception as e:  # values of unexpected types inside an otherwise readable file
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ImportRefused(f"{path.name}: a malformed {fmt} file ({type(e).__name__}: {text})") from None
    del data
    name = notes["network"]
    config.license = DEFAULT_LICENSE if license is None else license
    config.source = {"file": path.name, "sha256": sha256, "format": fmt, **notes}
    size = f"{config.resolution}x{config.resolution}"
    kind = "StyleGAN3" if config.arch == "stylegan3" else "StyleGAN2"
    variant = f"config {config.sg3_config.upper()}" if config.arch == "stylegan3" else config.architecture
    progress(f"[3/5] found '{name}' ({fmt}): {kind} {size}, {variant}, "
             f"z/w {config.z_dim}/{config.w_dim}, c_dim {config.c_dim}, conv_clamp {config.conv_clamp}, "
             f"{config.num_ws} ws")
    try:
        G = build_generator(config)
    except ValueError as e:
        raise ImportRefused(f"{path.name}: '{name}' describes a network ganserve cannot build ({e})") from None
    if mismatch := state_dict_mismatch(G.state_dict(), tensors, optional=frozenset({"w_avg"})):
        raise ImportRefused(f"{path.name}: '{name}' does not have {kind}'s tensors ({mismatch})")
    if "w_avg" not in tensors:  # only rosinality checkpoints saved by its train.py lack it
        G.load_state_dict(tensors, strict=False)
        G.estimate_w_avg()
        config.source["w_avg"] = "estimated: the mean of 4096 mapped latents (seed 0); the file has no latent_avg"
        tensors["w_avg"] = G.w_avg.clone()
    G.load_state_dict(tensors)
    G.eval().requires_grad_(False)
    if not torch.isfinite(G.w_avg).all():
        raise ImportRefused(f"{path.name}: '{name}' has no usable w_avg")
    with torch.no_grad():
        z = torch.randn(2, config.z_dim, generator=torch.Generator().manual_seed(0))
        c = torch.eye(config.c_dim)[:1].repeat(2, 1) if config.c_dim else None
        if not torch.isfinite(G.synthesis(G.mapping(z, c))).all():
            raise ImportRefused(f"{path.name}: '{name}' produces non-finite images")
    progress(f"[4/5] built ganserve {config.arch} and loaded {len(tensors)} tensors "
             f"({G.parameter_counts()['total']:,} parameters)")
    _write_atomically(G, config, out, force)
    progress(f"[5/5] wrote {out} ({CONFIG_NAME} + weights; licence: {config.license})")
    return out


def _write_atomically(G, config, out: Path, force: bool) -> None:
    """Write into a temporary sibling folder, then rename it to `out` (replacing it only with force)."""

    def check(existing: Path) -> None:
        if not force and (not existing.is_dir() or any(existing.iterdir())):
            raise ImportRefused(f"{out} appeared while importing; not replacing it")

    with staged_dir(out, before_replace=check) as tmp:
        save_model(G, tmp, config)
