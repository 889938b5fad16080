"""Prometheus metrics of one server: requests by status, latency, queue time, batch sizes, images, queue depth.

Owns the registry (one per server, no global state) and the ASGI middleware that counts every HTTP request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/generate", "/latents", "/interpolate", "/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ganserve_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ganserve_request_seconds", "HTTP request latency, to the last byte sent",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("ganserve_queue_seconds", "Time an image waited before its batch started",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.device_time = Histogram("ganserve_batch_seconds", "Time one device batch took, host pixels included",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ganserve_batch_size", "Images per device batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.encode_time = Histogram("ganserve_encode_seconds", "Time to encode one image", ["format"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("ganserve_images_generated", "Images generated", ["model", "format"], registry=r)
        self.rejected = Counter("ganserve_queue_full", "Requests refused with 503 because the queue was full",
                                registry=r)
        self.queue_depth = Gauge("ganserve_queue_depth", "Images queued or on the device", registry=r)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Counts each HTTP request by status and times it until its last byte (streamed bodies included)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        method, status, started = scope["method"], 500, time.monotonic()

        async def send_and_observe(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.monotonic() - started)
