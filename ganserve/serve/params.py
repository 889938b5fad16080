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
from ganserve.inference.sampling import SampleSpec, make_spec
from ganserve.models.config import ModelConfig
from ganserve.schema import (
    MAX_SEED,
    MODEL_NAME_PATTERN,  # noqa: F401 (ganserve.serve.server reads it from here)
    PARAMS,
    SEED,
    SEEDS,
    SPEC_PARAMS,
    Param,
    parse_seeds,
)

Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]


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
    __doc__="POST /generate: many images, streamed back as they are produced.",
    seeds=(Annotated[list[Seed], Field(min_length=1)] | Annotated[str, Field(min_length=1, max_length=SEEDS.max_length)]
           | Seed, Field(description=SEEDS.description)),
    **{p.name: _field(p, json=True) for p in PARAMS},
)


def parse_query(query: Mapping[str, str]) -> BaseModel:
    """GET /generate's query string as a GenerateQuery, the one parser of both its entries (routes.FastGet and the
    FastAPI route); a parameter given twice counts with its last value, as FastAPI reads it. RequestValidationError,
    located in "query" as FastAPI's own, when it does not validate."""
    try:
        return GenerateQuery.model_validate(dict(query))
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


def make_job(params: BaseModel, seeds: Sequence[int], models: Mapping[str, ModelConfig], default_model: str) -> Job:
    """Check `params` (a GenerateQuery or GenerateBody) against the requested model with make_spec, once for all
    seeds, and build one SampleSpec per seed. A SpecError becomes an ApiError naming its field: 400 when the model
    cannot honour the parameter at all (style mixing on ProGAN), else 422."""
    name, config = resolve_model(params.model, models, default_model)
    try:
        first = make_spec(config, seeds[0], **{p.name: getattr(params, p.name) for p in SPEC_PARAMS})
    except SpecError as e:
        raise ApiError(400 if isinstance(e, UnsupportedError) else 422, str(e), e.field) from None
    return Job(name, [first] + [dataclasses.replace(first, seed=s) for s in seeds[1:]], params.format)
