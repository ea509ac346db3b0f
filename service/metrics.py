"""Prometheus metrics, one CollectorRegistry per app (tests and several apps never collide).

When `pmerge serve` runs front-end processes, every process of the service (the front ends, the
engine) writes its metrics into PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode,
set before any metric exists) and any front's /metrics sums them all.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pmerge_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("pmerge_http_request_duration_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("pmerge_queue_wait_seconds", "Time an image waits before its forward pass",
                                    buckets=WAIT_BUCKETS, registry=r)
        self.batch_size = Histogram("pmerge_batch_size_images", "Images per forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("pmerge_batch_duration_seconds", "Duration of one forward pass",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("pmerge_images_classified", "Images classified", registry=r)
        # the CPU time of the threads doing each stage (torch's own intra-op threads not included):
        # what a request costs beyond them is the processes' CPU time less these
        self.cpu = Counter("pmerge_stage_cpu_seconds", "CPU seconds of the threads decoding images (decode) and "
                           "running forward passes, transfers included (forward)", ["stage"], registry=r)
        for stage in ("decode", "forward"):
            self.cpu.labels(stage)
        self.queue_depth = Gauge("pmerge_queue_images", "Images waiting in the engine queue", registry=r,
                                 multiprocess_mode="livesum")
        self.downloads = Counter("pmerge_downloads", "Checkpoint requests by cache result (hit, build)",
                                 ["result"], registry=r)
        self.family_events = Counter("pmerge_family_events", "Families loaded, failed to load, evicted (least "
                                     "recently used) and unloaded (removed or replaced in the store)", ["event"],
                                     registry=r)
        for event in ("loaded", "load_failed", "evicted", "unloaded"):
            self.family_events.labels(event)
        self.unhandled = Counter("pmerge_unhandled_exceptions", "Exceptions that reached the last-resort 500 handler",
                                 registry=r)

    def observe_batch(self, images: int, seconds: float, cpu_seconds: float) -> None:
        self.cpu.labels("forward").inc(cpu_seconds)
        self.batch_size.observe(images)
        self.batch_seconds.observe(seconds)
        self.images.inc(images)
        self.sample_queue()

    def track_queue(self, depth: Callable[[], float]) -> None:
        if self.multiprocess:  # read by another process: the engine process sets it as batches go
            self.queue_source = depth
        else:
            self.queue_depth.set_function(depth)

    def sample_queue(self) -> None:
        source = getattr(self, "queue_source", None)
        if source is not None:
            self.queue_depth.set(source())

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Raw ASGI: counts every response by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
