"""Prometheus metrics, one registry per app: request counts and latencies (ASGI middleware), and, read
from the database and the broker at scrape time, jobs by status, queue depth and stage durations."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from service.jobstore import count_by_status, stage_durations
from service.models import JOB_STATUSES

log = logging.getLogger(__name__)


class _StateCollector:
    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self):
        jobs = GaugeMetricFamily("skillkd_jobs", "jobs by status", labels=["status"])
        stages = SummaryMetricFamily(
            "skillkd_stage_duration_seconds", "duration of finished stages", labels=["stage"]
        )
        try:
            with self.services.factory() as session:
                counts = count_by_status(session)
                durations = stage_durations(session)
            for status in JOB_STATUSES:
                jobs.add_metric([status], counts.get(status, 0))
            for stage, count, total in durations:
                stages.add_metric([stage], count_value=count, sum_value=float(total or 0.0))
        except Exception as exc:
            log.warning("metrics: database unavailable (%s)", exc)
        yield jobs
        yield stages
        depth = GaugeMetricFamily("skillkd_queue_depth", "messages waiting in the broker queue")
        try:
            value = self.services.enqueuer.depth()
            if value is not None:
                depth.add_metric([], value)
        except Exception as exc:
            log.warning("metrics: broker unavailable (%s)", exc)
        yield depth


class Metrics:
    """The app's metrics. `registry` holds its request counters and latencies; `collect()` is what /metrics
    shows: the registry, or, when several API processes serve one port (`settings.prometheus_multiproc_dir`,
    PROMETHEUS_MULTIPROC_DIR: prometheus_client then keeps every process's counters in a file there), the sum
    over all of them, plus the database and broker figures read at scrape time."""

    def __init__(self, services: Any) -> None:
        self.registry = CollectorRegistry()
        self.multiproc_dir = services.settings.prometheus_multiproc_dir
        self.requests = Counter(
            "skillkd_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "skillkd_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.state = _StateCollector(services)
        self.registry.register(self.state)

    def collect(self) -> bytes:
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiproc_dir))
        registry.register(self.state)
        return generate_latest(registry)


class MetricsMiddleware:
    """Pure ASGI (streaming responses such as SSE pass through untouched)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 499}  # no answer sent and no error raised: the client went away (ErrorMiddleware)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status["code"] == 499:
                status["code"] = 500
            raise
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


__all__ = ["Metrics", "MetricsMiddleware"]
