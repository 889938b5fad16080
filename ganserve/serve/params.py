"""Request parameters of the HTTP API: the pydantic query and body models, built from ganserve.schema.PARAMS, the
one parser of GET /generate's query string, and make_job.

Owns turning a request into validated SampleSpecs (or an ApiError naming the bad field) before anything is queued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, create_model

from ganserve.errors import SpecError, UnsupportedError
from ganserve.inference.sampling import SampleSpec, make_latent_specs, make_spec
from ganserve.models.config import ModelConfig
from ganserve.schema import (
    ANIMATION_FORMATS,
    BY_NAME,
    FPS,
    IMAGE_FORMATS,
    LATENT_PARAMS,
    MAX_SEED,
    MODEL_NAME_PATTERN,  # noqa: F401 (ganserve.serve.server reads it from here)
    PARAMS,
    SEED,
    SEEDS,
    SPACE,
    SPEC_PARAMS,
    STEPS,
    TO_SEED,
    Param,
    W,
    Z,
    parse_seeds,
)

Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[list[Number], Field(min_length=1)]


class ApiError(HTTPException):
    """A client error with the request field it is about (None when it is about the request as a whole)."""

    def __init__(self, status_code: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status_code, detail, headers)
        self.field = field


def _field(p: Param, json: bool = False) -> tuple[Any, Any]:
    """The pydantic annotation and default of parameter `p`: its type, bounds, HTTP name and description from the
    table; in a JSON body (`json`) also the list form of `p.json_list`. Optional unless it is `required`."""
    if p.choices is not None:
        annotation: Any = Literal[p.choices]
    elif p.type is str:
        min_length = None if p.pattern else 1  # a pattern says what it may be, empty or not
        annotation = Annotated[str, Field(min_length=min_length, max_length=p.max_length, pattern=p.pattern)]
    elif p.type is float:
        annotation = Annotated[float, Field(ge=p.ge, le=p.le, allow_inf_nan=False)]
    else:
        annotation = Annotated[int, Field(ge=p.ge, le=p.le)]
    if json and p.json_list is not None:
        item, shortest, longest = p.json_list
        annotation = annotation | Annotated[list[StrictInt if item is int else item],
                                            Field(min_length=shortest, max_length=longest)]
    description = (p.json_description if json else None) or p.description
    if p.required:
        return annotation, Field(alias=p.http, description=description)
    if p.default is None:
        annotation = annotation | None
    return annotation, Field(p.default, alias=p.http, description=description)


GenerateQuery: type[BaseModel] = create_model(
    "GenerateQuery", __config__=ConfigDict(extra="forbid"), __doc__="GET /generate: one image.",
    seed=_field(SEED), **{p.name: _field(p) for p in PARAMS},
)
GenerateBody: type[BaseModel] = create_model(
    "GenerateBody", __config__=ConfigDict(extra="forbid"),
    __doc__="POST /generate: many images, streamed back as they are produced. Give exactly one of seeds, z and w.",
    seeds=(Annotated[list[Seed], Field(min_length=1)] | Annotated[str, Field(min_length=1, max_length=SEEDS.max_length)]
           | Seed | None, Field(None, description=SEEDS.description)),
    z=(Annotated[list[Vector], Field(min_length=1)] | None, Field(None, description=Z.description)),
    w=(Annotated[list[Vector | Annotated[list[Vector], Field(min_length=1)]], Field(min_length=1)] | None,
       Field(None, description=W.description)),
    **{p.name: _field(p, json=True) for p in PARAMS},
)
LatentsQuery: type[BaseModel] = create_model(
    "LatentsQuery", __config__=ConfigDict(extra="forbid"),
    __doc__="GET /latents: the z and w of a seed.",
    seed=_field(SEED), **{name: _field(BY_NAME[name]) for name in (*LATENT_PARAMS, "model")},
)
INTERPOLATE_FORMAT = Param("format", str, "png or jpeg: the frames as multipart/mixed parts, in order; gif or webp: "
                           "one animated file", default="png", choices=(*IMAGE_FORMATS[:2], *ANIMATION_FORMATS))
InterpolateQuery: type[BaseModel] = create_model(
    "InterpolateQuery", __config__=ConfigDict(extra="forbid"),
    __doc__="GET /interpolate: frames from one seed's image to another's.",
    seed=_field(dataclasses.replace(SEED, description="the seed the interpolation starts at")),
    to_seed=_field(TO_SEED), steps=_field(STEPS), space=_field(SPACE), fps=_field(FPS),
    **{p.name: _field(INTERPOLATE_FORMAT if p.name == "format" else p) for p in PARAMS},
)


def parse_query(query: Mapping[str, str], model: type[BaseModel] = GenerateQuery) -> BaseModel:
    """A query string as `model` (GenerateQuery: GET /generate's, the one parser of both its entries, routes.FastGet
    and the FastAPI route); a parameter given twice counts with its last value, as FastAPI reads it.
    RequestValidationError, located in "query" as FastAPI's own, when it does not validate."""
    try:
        return model.model_validate(dict(query))
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", *err["loc"])} for err in e.errors()]) from None


def openapi_parameters(model: type[BaseModel]) -> list[dict]:
    """The query parameters of `model` in an OpenAPI operation, as FastAPI lists those of a Query() model (GET
    /generate parses its query itself, with parse_query, and documents it with these)."""
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop,
         **({"description": prop["description"]} if "description" in prop else {})}
        for name, prop in schema["properties"].items()
    ]


@dataclass(frozen=True)
class Job:
    """A validated request: which model, which images, in which file format."""

    model: str
    specs: list[SampleSpec]
    format: str


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


def api_error(e: SpecError) -> ApiError:
    """A SpecError as an ApiError naming its field: 400 when the model cannot honour the parameter at all (style
    mixing or w on ProGAN), else 422."""
    return ApiError(400 if isinstance(e, UnsupportedError) else 422, str(e), e.field)


def spec_params(params: BaseModel, names: Sequence[str] | None = None) -> dict[str, Any]:
    """make_spec's keywords (SPEC_PARAMS, or those of them in `names`) that a validated request has."""
    return {p.name: getattr(params, p.name) for p in SPEC_PARAMS
            if hasattr(params, p.name) and (names is None or p.name in names)}


def make_job(params: BaseModel, seeds: Sequence[int], models: Mapping[str, ModelConfig], default_model: str) -> Job:
    """Check `params` (a GenerateQuery or GenerateBody) against the requested model with make_spec, once for all
    seeds, and build one SampleSpec per seed; a SpecError becomes an ApiError (api_error)."""
    name, config = resolve_model(params.model, models, default_model)
    try:
        first = make_spec(config, seeds[0], **spec_params(params))
    except SpecError as e:
        raise api_error(e) from None
    return Job(name, [first] + [dataclasses.replace(first, seed=s) for s in seeds[1:]], params.format)


def make_body_job(body: BaseModel, models: Mapping[str, ModelConfig], default_model: str, max_images: int) -> Job:
    """POST /generate's job: from its seeds, or from its z or w (one SampleSpec per latent). 422 unless exactly
    one of them is given, 413 for more than `max_images`."""
    given = [k for k in ("seeds", "z", "w") if getattr(body, k) is not None]
    if len(given) != 1:
        field = given[1] if given else "seeds"
        raise ApiError(422, f"give exactly one of seeds, z and w; got {' and '.join(given) or 'none'}", field)
    if given[0] == "seeds":
        return make_job(body, parse_request_seeds(body.seeds, max_images), models, default_model)
    latents = getattr(body, given[0])
    if len(latents) > max_images:
        raise ApiError(413, f"too many latents: {len(latents)}, at most {max_images} per request", given[0])
    name, config = resolve_model(body.model, models, default_model)
    try:
        specs = make_latent_specs(config, **{given[0]: latents}, **spec_params(body))
    except SpecError as e:
        raise api_error(e) from None
    return Job(name, specs, body.format)
