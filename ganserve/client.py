"""Python client of the ganserve HTTP API: Client (blocking) and AsyncClient, images as PIL images or raw bytes,
latents as numpy arrays.

Owns building requests (their parameters as ganserve.schema names them), reading the multipart image streams of
POST /generate and GET /interpolate, retrying on 503, and ServerError. Imports neither torch nor the server.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

from ganserve.multipart import MultipartParser, boundary_of
from ganserve.schema import http_params, parse_seeds

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_CHUNK = 128  # seeds or latents per POST when generate_many or generate_latents splits a long list
MAX_CHUNK_BYTES = 4 << 20  # JSON of latents per POST (the server refuses bodies over 8 MiB by default)


class ServerError(Exception):
    """The server refused or failed a request. `status`, `detail` (its message) and `field` (the bad parameter)."""

    def __init__(self, status: int, detail: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.field, self.retry_after = status, detail, field, retry_after


def _error(status: int, content: bytes, headers: httpx.Headers) -> ServerError:
    try:
        body = httpx.Response(status, content=content).json()
        detail, field = str(body.get("detail", body)), body.get("field")
    except (ValueError, AttributeError):
        detail, field = content.decode("utf-8", "replace")[:500] or httpx.codes.get_reason_phrase(status), None
    retry = headers.get("retry-after")
    return ServerError(status, detail, field, float(retry) if retry and retry.isdigit() else None)


def _seed_list(seeds: int | str | Iterable[int]) -> list[int]:
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    return [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]


def _chunks(seeds: list[int], concurrency: int, chunk_size: int | None) -> list[list[int]]:
    size = chunk_size or min(MAX_CHUNK, max(1, math.ceil(len(seeds) / max(1, concurrency))))
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def to_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _latent_list(latents: object) -> list:
    """A list of latents (numpy arrays or nested lists) as JSON-ready nested lists; float32 values stay exact."""
    if isinstance(latents, np.ndarray):
        return latents.tolist()
    return [np.asarray(v).tolist() if isinstance(v, np.ndarray) else v for v in latents]


def _latent_chunks(items: list, concurrency: int, chunk_size: int | None) -> list[tuple[int, list]]:
    """(offset, latents) chunks: at most MAX_CHUNK (or `chunk_size`) latents and about MAX_CHUNK_BYTES of JSON each,
    spread over `concurrency` requests."""
    size = chunk_size or min(MAX_CHUNK, max(1, math.ceil(len(items) / max(1, concurrency))))
    out: list[tuple[int, list]] = []
    start, used = 0, 0
    for i, item in enumerate(items):
        n = len(json.dumps(item)) + 2
        if i > start and (i - start >= size or used + n > MAX_CHUNK_BYTES):
            out.append((start, items[start:i]))
            start, used = i, 0
        used += n
    if start < len(items):
        out.append((start, items[start:]))
    return out


def _as_latents(body: dict) -> dict:
    """GET /latents' answer with z [z_dim] and w [num_ws, w_dim] (or None) as float32 arrays."""
    w = body.get("w")
    return {**body, "z": np.asarray(body["z"], np.float32), "w": None if w is None else np.asarray(w, np.float32)}


def _one_of_z_w(z: object, w: object) -> tuple[str, list]:
    if (z is None) == (w is None):
        raise ValueError("give exactly one of z and w")
    return ("z", _latent_list(z)) if z is not None else ("w", _latent_list(w))  # the server takes both w forms


@dataclass
class _Request:
    """One streaming request: its (index, image) results are `offset` + the part's `key` header."""

    method: str
    path: str
    kwargs: dict  # of httpx's request: json or params
    key: str = "x-seed"
    offset: int = 0


def _parts(parser: MultipartParser, chunk: bytes, key: str = "x-seed", offset: int = 0) -> Iterator[tuple[int, bytes]]:
    for part in parser.feed(chunk):
        if "x-error" in part.headers:
            raise _error(int(part.headers["x-error"]), part.body, httpx.Headers())
        yield offset + int(part.headers[key]), part.body


def _interpolate_params(seed: int, to_seed: int, steps: int, space: str | None, params: dict) -> dict:
    return http_params(seed=seed, to_seed=to_seed, steps=steps, space=space, **params)


def _in_order(index: int, expected: int) -> None:
    if index != expected:
        raise ValueError(f"frame {index} arrived where frame {expected} was due")


class _Arrivals:
    """The consumer's side of generate_many_bytes, for Client (threads) and AsyncClient (tasks) alike: each worker
    puts (seed, bytes) results, an exception it met, and None when it ends on one queue, read until all have ended."""

    def __init__(self, workers: int):
        self.running = workers

    def is_result(self, item) -> bool:
        """True for a (seed, bytes) to hand on; counts a worker's end (None) and raises a worker's exception."""
        if item is None:
            self.running -= 1
            return False
        if isinstance(item, BaseException):
            raise item
        return True


class Client:
    """Blocking client. `generate_many*` runs up to `concurrency` streaming requests at once on threads."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 120.0, retries: int = 3):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.retries = retries

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response = self.http.request(method, path, **kwargs)
            if response.status_code < 400:
                return response
            error = _error(response.status_code, response.content, response.headers)
            if response.status_code != 503 or attempt == self.retries:
                raise error
            time.sleep(min(error.retry_after or 1.0, 10.0))
        raise AssertionError("unreachable")

    def models(self) -> dict:
        return self._send("GET", "/models").json()

    def health(self) -> dict:
        response = self.http.get("/health")
        return response.json() if response.status_code in (200, 503) else {"status": f"HTTP {response.status_code}"}

    def generate_bytes(
        self, seed: int, psi: float | None = None, mix_seed: int | None = None, mix_layers: str | None = None,
        model: str | None = None, noise: str | None = None, truncation_cutoff: int | None = None,
        format: str | None = None, class_idx: int | None = None, rotate: float | None = None,
        translate: tuple[float, float] | str | None = None,
    ) -> bytes:
        """One encoded image (PNG unless `format` says jpeg or webp); `class_idx`: the class of a conditional model;
        `rotate` (degrees) and `translate` ((x, y) image sizes): StyleGAN3 only."""
        params = http_params(seed=seed, psi=psi, mix_seed=mix_seed, mix_layers=mix_layers, model=model, noise=noise,
                         truncation_cutoff=truncation_cutoff, format=format, class_idx=class_idx, rotate=rotate,
                         translate=translate)
        return self._send("GET", "/generate", params=params).content

    def generate(self, seed: int, **params) -> Image.Image:
        """One image as a PIL image; parameters as for generate_bytes."""
        return to_image(self.generate_bytes(seed, **params))

    def _stream(self, request: _Request, stop: threading.Event) -> Iterator[tuple[int, bytes]]:
        for attempt in range(self.retries + 1):
            with self.http.stream(request.method, request.path, **request.kwargs) as response:
                if response.status_code >= 400:
                    error = _error(response.status_code, response.read(), response.headers)
                    if response.status_code != 503 or attempt == self.retries:
                        raise error
                else:
                    parser = MultipartParser(boundary_of(response.headers.get("content-type", "")))
                    for chunk in response.iter_bytes():
                        yield from _parts(parser, chunk, request.key, request.offset)
                        if stop.is_set():
                            return
                    parser.close()
                    return
            time.sleep(min(error.retry_after or 1.0, 10.0))

    def _fan_out(self, requests: list[_Request], concurrency: int) -> Iterator[tuple[int, bytes]]:
        """The results of `requests`, up to `concurrency` of them streaming at once on threads, as they arrive."""
        todo: queue.Queue = queue.Queue()
        for r in requests:
            todo.put(r)
        results: queue.Queue = queue.Queue()  # unbounded: a worker never blocks on it, so it can always stop
        stop = threading.Event()

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        request = todo.get_nowait()
                    except queue.Empty:
                        return
                    for item in self._stream(request, stop):
                        results.put(item)
            except BaseException as e:  # handed to the consumer
                results.put(e)
            finally:
                results.put(None)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(concurrency, len(requests)) or 1)]
        for t in threads:
            t.start()
        arrivals = _Arrivals(len(threads))
        try:
            while arrivals.running:
                item = results.get()
                if arrivals.is_result(item):
                    yield item
        finally:
            stop.set()  # workers still streaming stop after their next chunk

    def generate_many_bytes(
        self, seeds: int | str | Iterable[int], concurrency: int = 1, chunk_size: int | None = None, **params
    ) -> Iterator[tuple[int, bytes]]:
        """(seed, encoded image) for every seed, as they arrive (not in order). `seeds`: list, range or '0-99'."""
        body = http_params(**params)
        requests = [_Request("POST", "/generate", {"json": {"seeds": c, **body}})
                    for c in _chunks(_seed_list(seeds), concurrency, chunk_size)]
        yield from self._fan_out(requests, concurrency)

    def generate_many(self, seeds: int | str | Iterable[int], concurrency: int = 1, **params):
        """(seed, PIL image) for every seed, as they arrive."""
        for seed, data in self.generate_many_bytes(seeds, concurrency=concurrency, **params):
            yield seed, to_image(data)

    def latents(self, seed: int, **params) -> dict:
        """A seed's latents: {"seed", "model", "z": float32 [z_dim], "w": float32 [num_ws, w_dim] (what the
        synthesis network receives, after truncation and mixing) or None for ProGAN}. Parameters: psi, mix_seed,
        mix_layers, truncation_cutoff, class_idx, model."""
        return _as_latents(self._send("GET", "/latents", params=http_params(seed=seed, **params)).json())

    def generate_latents_bytes(
        self, z: Sequence | np.ndarray | None = None, w: Sequence | np.ndarray | None = None, concurrency: int = 1,
        chunk_size: int | None = None, **params,
    ) -> Iterator[tuple[int, bytes]]:
        """(index, encoded image) for every latent, as they arrive (not in order). Exactly one of `z`: a list of z
        vectors ([N, z_dim]; mapping, truncation and mixing apply as for seeds) and `w`: a list of ws, each
        [num_ws, w_dim] (as latents() gives) or [w_dim] (used for every layer), taken as given. One latent is a list
        of one. Long lists are split into requests of at most `chunk_size`; indices are positions in `z` or `w`."""
        key, items = _one_of_z_w(z, w)
        body = http_params(**params)
        requests = [_Request("POST", "/generate", {"json": {key: c, **body}}, "x-index", offset)
                    for offset, c in _latent_chunks(items, concurrency, chunk_size)]
        yield from self._fan_out(requests, concurrency)

    def generate_latents(self, z=None, w=None, concurrency: int = 1, **params):
        """(index, PIL image) for every latent, as they arrive; arguments as for generate_latents_bytes."""
        for index, data in self.generate_latents_bytes(z, w, concurrency=concurrency, **params):
            yield index, to_image(data)

    def interpolate_bytes(self, seed: int, to_seed: int, steps: int, space: str | None = None,
                          **params) -> Iterator[bytes]:
        """The `steps` encoded frames from `seed`'s image to `to_seed`'s, in order; `space`: w (StyleGAN's default)
        or z. The first and last frames are the two seeds' images."""
        query = _interpolate_params(seed, to_seed, steps, space, params)
        for expected, (index, data) in enumerate(
                self._stream(_Request("GET", "/interpolate", {"params": query}, "x-index"), threading.Event())):
            _in_order(index, expected)
            yield data

    def interpolate(self, seed: int, to_seed: int, steps: int, space: str | None = None, **params):
        """The frames of interpolate_bytes as PIL images, in order."""
        for data in self.interpolate_bytes(seed, to_seed, steps, space, **params):
            yield to_image(data)

    def animation(self, seed: int, to_seed: int, steps: int, format: str = "gif", fps: float | None = None,
                  space: str | None = None, **params) -> bytes:
        """The interpolation as one looping animated file: GIF, or WebP with format="webp"."""
        query = _interpolate_params(seed, to_seed, steps, space, {"format": format, "fps": fps, **params})
        return self._send("GET", "/interpolate", params=query).content


class AsyncClient:
    """asyncio client with the same methods as Client, as coroutines and async iterators."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 120.0, retries: int = 3):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)
        self.retries = retries

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response = await self.http.request(method, path, **kwargs)
            if response.status_code < 400:
                return response
            error = _error(response.status_code, response.content, response.headers)
            if response.status_code != 503 or attempt == self.retries:
                raise error
            await asyncio.sleep(min(error.retry_after or 1.0, 10.0))
        raise AssertionError("unreachable")

    async def models(self) -> dict:
        return (await self._send("GET", "/models")).json()

    async def generate_bytes(
        self, seed: int, psi: float | None = None, mix_seed: int | None = None, mix_layers: str | None = None,
        model: str | None = None, noise: str | None = None, truncation_cutoff: int | None = None,
        format: str | None = None, class_idx: int | None = None, rotate: float | None = None,
        translate: tuple[float, float] | str | None = None,
    ) -> bytes:
        params = http_params(seed=seed, psi=psi, mix_seed=mix_seed, mix_layers=mix_layers, model=model, noise=noise,
                         truncation_cutoff=truncation_cutoff, format=format, class_idx=class_idx, rotate=rotate,
                         translate=translate)
        return (await self._send("GET", "/generate", params=params)).content

    async def generate(self, seed: int, **params) -> Image.Image:
        return to_image(await self.generate_bytes(seed, **params))

    async def _stream(self, request: _Request) -> AsyncIterator[tuple[int, bytes]]:
        for attempt in range(self.retries + 1):
            async with self.http.stream(request.method, request.path, **request.kwargs) as response:
                if response.status_code >= 400:
                    error = _error(response.status_code, await response.aread(), response.headers)
                    if response.status_code != 503 or attempt == self.retries:
                        raise error
                else:
                    parser = MultipartParser(boundary_of(response.headers.get("content-type", "")))
                    async for chunk in response.aiter_bytes():
                        for item in _parts(parser, chunk, request.key, request.offset):
                            yield item
                    parser.close()
                    return
            await asyncio.sleep(min(error.retry_after or 1.0, 10.0))

    async def _fan_out(self, requests: list[_Request], concurrency: int) -> AsyncIterator[tuple[int, bytes]]:
        """The results of `requests`, up to `concurrency` of them in flight at once, as they arrive."""
        results: asyncio.Queue = asyncio.Queue()
        todo = iter(requests)

        async def work() -> None:
            try:
                for request in todo:
                    async for item in self._stream(request):
                        await results.put(item)
            except Exception as e:  # handed to the consumer (a cancellation is not)
                await results.put(e)
            finally:
                await results.put(None)

        tasks = [asyncio.create_task(work()) for _ in range(min(concurrency, len(requests)) or 1)]
        arrivals = _Arrivals(len(tasks))
        try:
            while arrivals.running:
                item = await results.get()
                if arrivals.is_result(item):
                    yield item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def generate_many_bytes(
        self, seeds: int | str | Iterable[int], concurrency: int = 1, chunk_size: int | None = None, **params
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(seed, encoded image) for every seed, as they arrive, with up to `concurrency` requests in flight."""
        body = http_params(**params)
        requests = [_Request("POST", "/generate", {"json": {"seeds": c, **body}})
                    for c in _chunks(_seed_list(seeds), concurrency, chunk_size)]
        async for item in self._fan_out(requests, concurrency):
            yield item

    async def generate_many(self, seeds: int | str | Iterable[int], concurrency: int = 1, **params):
        async for seed, data in self.generate_many_bytes(seeds, concurrency=concurrency, **params):
            yield seed, to_image(data)

    async def latents(self, seed: int, **params) -> dict:
        """As Client.latents."""
        return _as_latents((await self._send("GET", "/latents", params=http_params(seed=seed, **params))).json())

    async def generate_latents_bytes(
        self, z: Sequence | np.ndarray | None = None, w: Sequence | np.ndarray | None = None, concurrency: int = 1,
        chunk_size: int | None = None, **params,
    ) -> AsyncIterator[tuple[int, bytes]]:
        """As Client.generate_latents_bytes: (index, encoded image) for every latent, as they arrive."""
        key, items = _one_of_z_w(z, w)
        body = http_params(**params)
        requests = [_Request("POST", "/generate", {"json": {key: c, **body}}, "x-index", offset)
                    for offset, c in _latent_chunks(items, concurrency, chunk_size)]
        async for item in self._fan_out(requests, concurrency):
            yield item

    async def generate_latents(self, z=None, w=None, concurrency: int = 1, **params):
        async for index, data in self.generate_latents_bytes(z, w, concurrency=concurrency, **params):
            yield index, to_image(data)

    async def interpolate_bytes(self, seed: int, to_seed: int, steps: int, space: str | None = None,
                                **params) -> AsyncIterator[bytes]:
        """As Client.interpolate_bytes: the encoded frames in order."""
        query = _interpolate_params(seed, to_seed, steps, space, params)
        expected = 0
        async for index, data in self._stream(_Request("GET", "/interpolate", {"params": query}, "x-index")):
            _in_order(index, expected)
            expected += 1
            yield data

    async def interpolate(self, seed: int, to_seed: int, steps: int, space: str | None = None, **params):
        async for data in self.interpolate_bytes(seed, to_seed, steps, space, **params):
            yield to_image(data)

    async def animation(self, seed: int, to_seed: int, steps: int, format: str = "gif", fps: float | None = None,
                        space: str | None = None, **params) -> bytes:
        query = _interpolate_params(seed, to_seed, steps, space, {"format": format, "fps": fps, **params})
        return (await self._send("GET", "/interpolate", params=query)).content
