"""Request parameters of the HTTP API: pydantic models for the query string and JSON body, and the model-aware check.

Owns turning a request into validated SampleSpecs (or an ApiError naming the bad field) before anything is queued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ganserve.errors import SpecError
from ganserve.inference.sampling import ROTATE_MAX, SampleSpec, make_spec
from ganserve.models.config import ModelConfig
from ganserve.models.latents import MAX_SEED, PSI_MAX, PSI_MIN, parse_layers, parse_seeds

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
ImageFormat = Literal["png", "jpeg", "webp"]


class ApiError(HTTPException):
    """A client error with the request field it is about (None when it is about the request as a whole)."""

    def __init__(self, status_code: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status_code, detail, headers)
        self.field = field


class CommonParams(BaseModel):
    """Everything but the seeds: shared by GET (query string) and POST (JSON body)."""

    model_config = ConfigDict(extra="forbid")

    psi: float = Field(1.0, ge=PSI_MIN, le=PSI_MAX, allow_inf_nan=False, description="truncation psi (1 = none)")
    truncation_cutoff: int | None = Field(None, ge=0, le=64, description="truncate only ws layers below this index")
    mix_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed whose styles replace mix_layers")
    mix_layers: str | None = Field(
        None, min_length=1, max_length=256, description="coarse, middle, fine, all, a range 'a-b' or a list '0,1,4-5'"
    )
    noise: Literal["const", "random", "none"] = Field(
        "const", description="const: the saved noise maps; random: seeded by the image's seed; none: no noise"
    )
    class_idx: int | None = Field(
        None, alias="class", ge=0, description="class label in [0, c_dim) of a class-conditional model (required "
        "for those; see c_dim in /models), not allowed for others"
    )
    rotate: float | None = Field(
        None, ge=-ROTATE_MAX, le=ROTATE_MAX, allow_inf_nan=False,
        description="StyleGAN3 only: rotate the image by this many degrees (counter-clockwise)"
    )
    translate: str | None = Field(
        None, min_length=1, max_length=64,
        description="StyleGAN3 only: shift the image by 'x,y' image sizes, e.g. '0.25,0'"
    )
    model: str | None = Field(None, pattern=MODEL_NAME_PATTERN, description="served model name (default: the first)")
    format: ImageFormat = "png"


class GenerateQuery(CommonParams):
    """GET /generate: one image."""

    seed: int = Field(ge=0, le=MAX_SEED, description="integer in [0, 2**32 - 1]")


class GenerateBody(CommonParams):
    """POST /generate: many images, streamed back as they are produced."""

    seeds: Annotated[list[Seed], Field(min_length=1)] | Annotated[str, Field(min_length=1, max_length=1000)] | Seed = (
        Field(description="a list of seeds, one seed, or a string like '0-99' or '1,2,5-10'")
    )
    mix_layers: str | Annotated[list[StrictInt], Field(min_length=1, max_length=64)] | None = Field(
        None, description="coarse, middle, fine, all, 'a-b', '0,1,4-5' or a list of ws indices"
    )
    translate: Annotated[list[float], Field(min_length=2, max_length=2)] | Annotated[
        str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="StyleGAN3 only: shift the image by [x, y] (or 'x,y') image sizes"
    )


@dataclass(frozen=True)
class Job:
    """A validated request: which model, which images, in which file format."""

    model: str
    specs: list[SampleSpec]
    format: str


def _check(field: str, fn, *args):
    try:
        return fn(*args)
    except SpecError as e:
        raise ApiError(422, str(e), e.field or field) from None


def resolve_model(name: str | None, models: Mapping[str, ModelConfig], default: str) -> tuple[str, ModelConfig]:
    name = default if name is None else name
    if name not in models:
        raise ApiError(404, f"no model named {name!r}; this server has {', '.join(models)}", "model")
    return name, models[name]


def parse_request_seeds(seeds: int | str | Sequence[int], max_seeds: int) -> list[int]:
    """The seed list of a POST; 413 when it holds more than `max_seeds`, 422 when it is malformed."""
    if isinstance(seeds, list) and len(seeds) > max_seeds:
        raise ApiError(413, f"too many seeds: {len(seeds)}, at most {max_seeds} per request", "seeds")
    try:
        return parse_seeds(seeds, max_count=max_seeds)
    except SpecError as e:
        status = 413 if str(e).startswith("too many seeds") else 422
        raise ApiError(status, str(e), "seeds") from None


def make_job(
    params: CommonParams, seeds: Sequence[int], models: Mapping[str, ModelConfig], default_model: str
) -> Job:
    """Check `params` against the requested model and build one SampleSpec per seed."""
    name, config = resolve_model(params.model, models, default_model)
    mixing = params.mix_seed is not None or params.mix_layers is not None
    if mixing and not config.supports_mixing:
        field = "mix_seed" if params.mix_seed is not None else "mix_layers"
        message = f"style mixing needs a StyleGAN model; {name!r} is {config.arch} (it has no w space)"
        raise ApiError(400, message, field)
    if params.mix_layers is not None:
        _check("mix_layers", parse_layers, params.mix_layers, config)
        if params.mix_seed is None:
            raise ApiError(422, "mix_layers was given without mix_seed", "mix_seed")
    if params.truncation_cutoff is not None and params.truncation_cutoff > config.num_ws:
        raise ApiError(
            422, f"truncation_cutoff must be in [0, {config.num_ws}] for {name!r}, got {params.truncation_cutoff}",
            "truncation_cutoff",
        )
    first = _check(
        "seed", make_spec, config, seeds[0], params.psi, params.mix_seed, params.mix_layers, params.noise,
        params.truncation_cutoff, params.class_idx, params.rotate, params.translate,
    )
    return Job(name, [first] + [dataclasses.replace(first, seed=s) for s in seeds[1:]], params.format)
