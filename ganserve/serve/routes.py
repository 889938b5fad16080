"""The HTTP API of DESIGN.md on the inference server's FastAPI app: GET/POST /generate, /latents, /interpolate,
/models, /health, /metrics.

Owns status codes, headers, JSON errors, the API-key check and the body-size limit; the work is done elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException

from ganserve import multipart
from ganserve.errors import SpecError
from ganserve.imaging import ANIMATIONS, encode_animation
from ganserve.inference.sampling import make_latent_specs, make_spec
from ganserve.inference.walks import check_walk
from ganserve.models.config import ModelConfig
from ganserve.models.latents import lerp, seed_to_z, slerp
from ganserve.schema import LATENT_PARAMS
from ganserve.serve.batching import WS, ImageResult
from ganserve.serve.dispatch import Dispatcher
from ganserve.serve.encoding import Encoder, media_type
from ganserve.serve.metrics import Metrics, RequestMetricsMiddleware
from ganserve.serve.params import (
    ApiError,
    GenerateBody,
    GenerateQuery,
    InterpolateQuery,
    Job,
    LatentsQuery,
    api_error,
    make_body_job,
    make_job,
    openapi_parameters,
    parse_query,
    resolve_model,
    spec_params,
)

OPEN_PATHS = ("/", "/health")  # reachable without the API key (the gallery page is static; it asks for the key)
GALLERY = Path(__file__).resolve().parent.parent / "gallery" / "index.html"


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in one sentence")
    field: str | None = Field(None, description="the request parameter it is about")


ERRORS = {
    400: {"model": ErrorBody, "description": "a parameter this model cannot honour (style mixing on ProGAN)"},
    401: {"model": ErrorBody, "description": "missing or wrong API key (when the server has one)"},
    404: {"model": ErrorBody, "description": "no such model"},
    413: {"model": ErrorBody, "description": "too many seeds, latents or frames, or a request body over the limit"},
    422: {"model": ErrorBody, "description": "a malformed or out-of-range parameter"},
    503: {"model": ErrorBody, "description": "the queue is full; see Retry-After"},
}


@dataclass
class Service:
    """What the routes need; built in the main process, used in the API process."""

    configs: dict[str, ModelConfig]
    default_model: str
    backend: str
    dispatcher: Dispatcher
    encoder: Encoder
    metrics: Metrics
    max_seeds: int
    window: int  # images of one POST in flight at once
    server: object  # the inference server (litserve_glue.InferenceServer), for worker readiness
    backend_names: dict[str, str]  # model -> backend the workers chose (filled in once they are ready)

    async def image(self, result: ImageResult, model: str, fmt: str) -> tuple[ImageResult, bytes]:
        data, seconds = await self.encoder.encode(result.pixels, fmt)
        self.metrics.encode_time.labels(fmt).observe(seconds)
        self.metrics.images.labels(model, fmt).inc()
        return result, data

    async def one_image(self, params: BaseModel) -> Response:
        """GET /generate's answer to validated query parameters, a GenerateQuery (ApiError before the image is
        queued)."""
        job = make_job(params, [params.seed], self.configs, self.default_model)
        self.dispatcher.admit()
        result, data = await self.image(await self.dispatcher.generate(job.model, job.specs[0]), job.model, job.format)
        headers = {"X-Seed": str(params.seed), "X-Model": job.model, "X-Batch-Size": str(result.batch_size)}
        return Response(data, media_type=media_type(job.format), headers=headers)

    def workers(self) -> tuple[int, int]:
        return self.server.workers_ready()

    async def ws(self, model: str, specs: list) -> list[np.ndarray]:
        """The ws [num_ws, w_dim] the workers' backend makes `specs`' images from (admitted as images are)."""
        self.dispatcher.admit()
        results = await asyncio.gather(*(self.dispatcher.generate(model, spec, WS) for spec in specs))
        return [r.ws for r in results]

    async def latents(self, params: BaseModel) -> dict:
        """GET /latents' answer: the seed's z, and its ws after truncation and mixing (None without a w space)."""
        name, config = resolve_model(params.model, self.configs, self.default_model)
        try:
            spec = make_spec(config, params.seed, **spec_params(params, LATENT_PARAMS))
        except SpecError as e:
            raise api_error(e) from None
        w = (await self.ws(name, [spec]))[0].tolist() if config.supports_mixing else None
        return {"seed": params.seed, "model": name, "z": seed_to_z(params.seed, config.z_dim).tolist(), "w": w}

    async def interpolation(self, q: BaseModel) -> tuple[Job, str]:
        """The frames of GET /interpolate as a job of latents, and the space they were walked in: in w (lerp between
        the two seeds' ws as GET /latents gives them) or in z (slerp between their zs, mapped, truncated and mixed
        as the seeds' are). Frame 0 is seed's image and the last to_seed's, bit for bit."""
        name, config = resolve_model(q.model, self.configs, self.default_model)
        if q.steps > self.max_seeds:
            raise ApiError(413, f"too many steps: {q.steps}, at most {self.max_seeds} frames per request", "steps")
        try:
            space = check_walk(config, [q.seed, q.to_seed], q.steps, q.space, q.noise)
            first = make_spec(config, q.seed, **spec_params(q))  # every parameter checked as for /generate
            if space == "z":
                zs = slerp(seed_to_z(q.seed, config.z_dim), seed_to_z(q.to_seed, config.z_dim), q.steps)
                return Job(name, make_latent_specs(config, z=zs, **spec_params(q)), q.format), space
        except SpecError as e:
            raise api_error(e) from None
        w_a, w_b = await self.ws(name, [first, dataclasses.replace(first, seed=q.to_seed)])
        frame = {k: v for k, v in spec_params(q).items() if k not in LATENT_PARAMS}  # they act in synthesis
        return Job(name, make_latent_specs(config, w=lerp(w_a, w_b, q.steps), **frame), q.format), space


UNION_HINTS = {
    "seeds": "give a list of integers, one integer, or a string like '0-99' or '1,2,5-10'",
    "mix_layers": "give coarse, middle, fine, all, a range 'a-b', a list '0,1,4-5', or a list of integers",
    "z": "give a list of z vectors, each a list of z_dim numbers: {\"z\": [[0.5, -1.2, ...]]}",
    "w": "give a list of ws, each num_ws lists of w_dim numbers (as GET /latents returns) or one list of w_dim "
         "numbers used for every layer: {\"w\": [[[...], ...]]}",
}


# -- errors ----------------------------------------------------------------------------------------------------
def _error(status: int, detail: str, field: str | None = None, headers=None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field, **extra}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), getattr(exc, "field", None), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    if not errors:
        return _error(422, "invalid request")
    # A union (seeds, mix_layers) reports one error per alternative: prefer one that is not just "wrong type".
    best = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    loc = best["loc"]
    field = str(loc[1]) if len(loc) > 1 and isinstance(loc[1], str) else str(loc[0]) if loc else None
    message = f"{field}: {best['msg']}"
    if best["type"] == "model_attributes_type" and loc == ["body"]:
        message = "the body must be a JSON object, sent with Content-Type: application/json"
    elif field in UNION_HINTS and best["type"].endswith("_type"):
        message = f"{field}: {UNION_HINTS[field]}"
    return _error(422, message, field, errors=errors)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal error: {type(exc).__name__}")


# -- middleware ------------------------------------------------------------------------------------------------
class ApiKeyMiddleware:
    """401 for every path but /health unless the X-API-Key header (or Authorization: Bearer) carries the key."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not secrets.compare_digest(given, self.key):
                response = _error(401, "missing or wrong API key: send it in the X-API-Key header",
                                  headers={"WWW-Authenticate": "X-API-Key"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over `limit` bytes, by Content-Length up front or by counting a chunked body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit():
            return await _error(400, "bad Content-Length header")(scope, receive, send)
        if int(declared) > self.limit:
            return await _error(413, f"request body too large: at most {self.limit} bytes")(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"request body too large: at most {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


class FastGet:
    """GET /generate without FastAPI's exception middleware, routing and parameter solving, which took about a third
    of the HTTP process's CPU per image (benchmarks/README.md). The same parser as the FastAPI route (parse_query),
    the same Service.one_image and the same error handler; a query that does not validate goes on to the FastAPI
    route, which answers it with the usual validation error."""

    def __init__(self, app, svc: Service):
        self.app, self.svc = app, svc

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/generate":
            return await self.app(scope, receive, send)
        try:
            params = parse_query(QueryParams(scope["query_string"]))
        except RequestValidationError:
            return await self.app(scope, receive, send)
        try:
            response = await self.svc.one_image(params)
        except StarletteHTTPException as e:  # an unknown model, a full queue, a failed worker: as FastAPI answers
            response = await _http_error(None, e)
        await response(scope, receive, send)


# -- streams -----------------------------------------------------------------------------------------------------
async def ordered(stream):
    """The (index, result) pairs of Dispatcher.stream, which come in order of completion, in index order."""
    waiting, following = {}, 0
    async for i, result in stream:
        waiting[i] = result
        while following in waiting:
            yield following, waiting.pop(following)
            following += 1


def stream_images(svc: Service, job: Job, in_order: bool = False, headers: dict | None = None) -> StreamingResponse:
    """`job`'s images as multipart/mixed, one part per image as it is encoded (in order with `in_order`); each part
    has X-Index, X-Seed or X-Latent, X-Batch-Size and X-Generated-At. An error after the first byte becomes the last
    part (X-Error)."""
    boundary = multipart.new_boundary()
    jobs = [(job.model, spec) for spec in job.specs]

    async def parts():
        try:
            results = svc.dispatcher.stream(jobs, svc.window, then=lambda r: svc.image(r, job.model, job.format))
            async for i, (result, data) in (ordered(results) if in_order else results):
                spec = job.specs[i]
                origin = {"X-Seed": str(spec.seed)} if spec.seed is not None else {"X-Latent": spec.label}
                part_headers = {
                    "Content-Type": media_type(job.format), **origin, "X-Index": str(i),
                    "X-Batch-Size": str(result.batch_size), "X-Generated-At": f"{result.generated_at:.6f}",
                }
                yield multipart.part(boundary, part_headers, data)
        except StarletteHTTPException as e:  # headers are sent already: the error becomes the last part
            body = JSONResponse({"detail": str(e.detail), "status": e.status_code}).body
            yield multipart.part(boundary, {"Content-Type": "application/json", "X-Error": str(e.status_code)}, body)
        yield multipart.closing(boundary)

    headers = {"X-Model": job.model, "X-Count": str(len(jobs)), **(headers or {})}
    return StreamingResponse(parts(), media_type=multipart.content_type(boundary), headers=headers)


# -- routes ----------------------------------------------------------------------------------------------------
def install(app: FastAPI, svc: Service, api_key: str | None, max_body: int) -> None:
    """Add the routes below (the inference server's app comes without routes of its own for them)."""
    app.exception_handlers.clear()
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)
    app.add_middleware(FastGet, svc=svc)
    app.add_middleware(BodyLimitMiddleware, limit=max_body)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
    app.add_middleware(RequestMetricsMiddleware, metrics=svc.metrics)  # outermost: counts 401s and 413s too
    app.title, app.description = "ganserve", "ProGAN/StyleGAN images over HTTP, batched dynamically on the device."

    images = {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the image"}

    @app.get("/generate", response_class=Response, responses={200: images, **ERRORS}, tags=["images"],
             openapi_extra={"parameters": openapi_parameters(GenerateQuery)})
    async def generate_one(request: Request) -> Response:
        """One image. Headers: X-Seed, X-Model, X-Batch-Size (the device batch this request rode in)."""
        return await svc.one_image(parse_query(request.query_params))

    @app.post("/generate", response_class=StreamingResponse, tags=["images"],
              responses={200: {"content": {"multipart/mixed": {}}, "description": "one part per image"}, **ERRORS})
    async def generate_many(body: GenerateBody) -> StreamingResponse:
        """Many images, from seeds or from latents (z or w), streamed as multipart/mixed in order of completion;
        each part has X-Index (the position in the request) and X-Seed (for seeds) or X-Latent (z or w)."""
        job = make_body_job(body, svc.configs, svc.default_model, svc.max_seeds)
        svc.dispatcher.admit()
        return stream_images(svc, job)

    @app.get("/latents", tags=["latents"], responses=ERRORS,
             openapi_extra={"parameters": openapi_parameters(LatentsQuery)})
    async def latents(request: Request) -> dict:
        """A seed's latents: `z` (z_dim numbers) and `w` (num_ws lists of w_dim numbers: what the synthesis network
        receives, after truncation and mixing; null for ProGAN, which has no w space). POST /generate with this `w`
        (or this `z` and the same parameters) gives the seed's image bit for bit."""
        return await svc.latents(parse_query(request.query_params, LatentsQuery))

    animations = {ANIMATIONS[f][1]: {} for f in ANIMATIONS}

    @app.get("/interpolate", tags=["latents"], response_class=Response,
             responses={200: {"content": {"multipart/mixed": {}, **animations},
                              "description": "the frames in order, one part each, or one animated file"}, **ERRORS},
             openapi_extra={"parameters": openapi_parameters(InterpolateQuery)})
    async def interpolate(request: Request) -> Response:
        """`steps` frames from `seed`'s image to `to_seed`'s, the first and last those images bit for bit: as
        multipart/mixed parts in frame order (X-Index), or one looping animated GIF/WebP (format=gif|webp)."""
        q = parse_query(request.query_params, InterpolateQuery)
        job, space = await svc.interpolation(q)
        svc.dispatcher.admit()
        if q.format in ANIMATIONS:
            results = svc.dispatcher.stream([(job.model, s) for s in job.specs], svc.window)
            frames = [r.pixels async for _, r in ordered(results)]
            data = await asyncio.to_thread(encode_animation, frames, q.format, q.fps)
            svc.metrics.images.labels(job.model, q.format).inc(len(frames))
            headers = {"X-Model": job.model, "X-Count": str(len(frames)), "X-Space": space}
            return Response(data, media_type=ANIMATIONS[q.format][1], headers=headers)
        return stream_images(svc, job, in_order=True, headers={"X-Space": space})

    @app.get("/", response_class=HTMLResponse, tags=["server"])
    async def gallery() -> HTMLResponse:
        """The gallery page (it uses only the endpoints below)."""
        if not GALLERY.is_file():
            return HTMLResponse('<p>ganserve is running: see <a href="/docs">/docs</a>.</p>')
        return HTMLResponse(GALLERY.read_text(encoding="utf-8"))

    @app.get("/models", tags=["server"])
    async def models() -> dict:
        """The served models; `default` is used when a request names none."""
        return {
            "default": svc.default_model,
            "max_seeds_per_request": svc.max_seeds,
            "models": [
                {"name": name, "arch": c.arch, "resolution": c.resolution, "num_ws": c.num_ws,
                 "img_channels": c.img_channels, "supports_mixing": c.supports_mixing, "c_dim": c.c_dim,
                 "backend": svc.backend_names.get(name, svc.backend)}
                for name, c in svc.configs.items()
            ],
        }

    @app.get("/health", tags=["server"])
    async def health() -> JSONResponse:
        """200 once every worker has loaded every model, else 503. Needs no API key."""
        try:
            ready, total = svc.workers()
        except Exception:  # the worker registry is gone: we are shutting down
            return JSONResponse({"status": "stopping"}, status_code=503)
        ok = total > 0 and ready == total
        body = {"status": "ready" if ok else "loading", "workers_ready": ready, "workers": total,
                "models": list(svc.configs), "queue_depth": svc.dispatcher.depth}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response, tags=["server"])
    async def metrics() -> Response:
        """Prometheus text format."""
        data, content_type = svc.metrics.render()
        return Response(data, media_type=content_type)
