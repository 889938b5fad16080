"""A run resolved before training starts: the complete config, run directory, network config, schedule and the
checkpoint a resumed run continues from.

Owns filling in what the config leaves to the data (absolute data path, resolution), a resumed run's saved config
with the few fields that may change, and the checks that refuse a run before any network is built.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganserve.errors import RunError
from ganserve.models.config import ModelConfig, stage_resolution
from ganserve.train.checkpoint import CHECKPOINT_FORMAT, latest_checkpoint, load_checkpoint
from ganserve.train.config import RESUME_OVERRIDABLE, Schedule, TrainConfig
from ganserve.train.data import natural_resolution
from ganserve.train.distributed import DistInfo


@dataclass(frozen=True)
class ResolvedRun:
    """Everything a run is, decided before it starts; `checkpoint` is the state a resumed run continues from."""

    cfg: TrainConfig
    run_dir: Path
    model_config: ModelConfig
    schedule: Schedule
    checkpoint: dict[str, Any] | None = None


def resolve(cfg: TrainConfig, resume: str | Path | None = None, resume_overrides: dict[str, Any] | None = None,
            dist: DistInfo | None = None) -> ResolvedRun:
    """The run `cfg` starts, or, with `resume` (a run directory or checkpoint), the run saved there with
    `resume_overrides` applied. `cfg` itself is left as it is; `dist` says how many processes share the batches
    and which one warns."""
    dist = dist or DistInfo()
    checkpoint = None
    if resume is not None:
        run_dir, checkpoint = _resume_target(Path(resume))
        saved = TrainConfig.from_dict(json.loads(checkpoint["train_config"]))
        cfg = dataclasses.replace(resumed_config(saved, resume_overrides or {}), out=str(run_dir))
    else:
        run_dir = Path(cfg.out)
        if latest_checkpoint(run_dir) is not None:
            raise RunError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).resolve()))  # found from any working directory
    cfg = dataclasses.replace(cfg, resolution=cfg.resolution or natural_resolution(cfg.data))
    model_config = cfg.model_config()
    schedule = Schedule(cfg, model_config.num_stages)
    _check_batches(schedule, dist.world_size)
    if dist.is_main:
        _warn_of_a_long_ema(cfg, schedule, checkpoint["nimg"] if checkpoint is not None else 0)
    return ResolvedRun(cfg, run_dir, model_config, schedule, checkpoint)


def _resume_target(path: Path) -> tuple[Path, dict[str, Any]]:
    """The run directory and the loaded checkpoint of a run directory (its latest) or of a checkpoint file."""
    if path.is_dir():
        run_dir, found = path, latest_checkpoint(path)
        if found is None:
            raise RunError(f"{path}: no checkpoint to resume from")
        path = found
    elif not path.is_file():
        raise RunError(f"{path}: no such run directory or checkpoint")
    else:
        run_dir = path.parent.parent
    checkpoint = load_checkpoint(path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a ganserve training checkpoint")
    return run_dir, checkpoint


def resumed_config(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A resumed run's saved config with the few fields that may change between runs (RESUME_OVERRIDABLE).

    Lengthening `final_kimg` trains on at the final resolution; shortening it below the position reached ends the
    run at once (it writes the model). Nothing that would make the resumed run differ before that point changes."""
    bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if bad:
        raise RunError(f"--resume keeps the run's saved config; only {', '.join(RESUME_OVERRIDABLE)} may change "
                       f"(got {', '.join(bad)})")
    if "data" in overrides:
        overrides = {**overrides, "data": str(Path(overrides["data"]).resolve())}
    return dataclasses.replace(cfg, **overrides)


def _check_batches(schedule: Schedule, world_size: int) -> None:
    for s, b in enumerate(schedule.batches):
        if b % world_size:
            r = stage_resolution(s)
            raise RunError(f"batch size {b} at {r}x{r} does not divide among {world_size} processes")


def _warn_of_a_long_ema(cfg: TrainConfig, schedule: Schedule, nimg: int) -> None:
    if schedule.stage_alpha(nimg) == (schedule.num_stages - 1, 1.0):
        return  # no stages (left) for the EMA to lag behind: the papers' 10 kimg suits a run's last stretch
    shortest = min(cfg.fade_kimg, cfg.stab_kimg)
    if cfg.ema_kimg > shortest / 5:
        warnings.warn(f"the generator EMA's half-life (ema_kimg {cfg.ema_kimg:g}) is long next to the stages "
                      f"({shortest:g} kimg): the served EMA generator will lag each new resolution's layers; "
                      f"--ema-kimg {shortest / 20:g} keeps it close (the papers use 1/60 of a stage)", stacklevel=3)
