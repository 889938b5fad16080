
"""Training checkpoints: G, D, G_ema, both optimizers, position in the schedule and every RNG state.

Owns the file format (plain tensors and Python types, loadable with torch.load(weights_only=True)), the run's
Progress it carries, atomic writes (temp file + os.replace), keeping the last few, and finding the latest one to
resume from.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganserve.errors import RunError
from ganserve.files import atomic_write

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "ganserve-train-checkpoint"
_NAME = re.compile(r"^ckpt-(\d{10})\.pt$")


def checkpoint_path(run_dir: str | Path, nimg: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{nimg:010d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# -- RNG states as tensors and plain types ---------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2] if py_state[2] is None else float(py_state[2])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the checkpoint dict ---------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """How far a run has come: steps, images shown and seconds spent, and the images and seconds at the final
    resolution (its training speed)."""

    step: int = 0
    nimg: int = 0
    elapsed: float = 0.0
    final_imgs: int = 0
    final_time: float = 0.0

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Progress:
        """The progress a checkpoint holds (older ones lack the final-resolution figures: zero)."""
        return cls(int(state["step"]), int(state["nimg"]), float(state["elapsed_s"]),
                   int(state.get("final_imgs", 0)), float(state.get("final_time_s", 0.0)))


def training_state(networks: dict[str, Any], progress: Progress, stage: int, alpha: float, train_config: str,
                   model_config: str) -> dict[str, Any]:
    """A checkpoint: the networks' and optimisers' state dicts, the progress and schedule position, every RNG
    state of this process, and the run's two configs as JSON."""
    return {
        "format": CHECKPOINT_FORMAT, "version": 1, **networks,
        "step": progress.step, "nimg": progress.nimg, "stage": stage, "alpha": alpha, "elapsed_s": progress.elapsed,
        "final_imgs": progress.final_imgs, "final_time_s": progress.final_time, "rng": rng_state(),
        "train_config": train_config, "model_config": model_config,
    }


# -- save / load -----------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write `state` atomically; with `keep`, delete all but the newest `keep` checkpoints beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    if keep is not None:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling code (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise RunError(f"{path}: not a readable training checkpoint ({e})") from None
