"""The API's Prometheus metrics, served at GET /metrics.

Counters and histograms are recorded as requests pass; gauges that describe the present
(blocks waiting for a forward, engines loaded, jobs by kind and state) are read when
Prometheus scrapes, so they are never stale and cost nothing between scrapes. Each app
has a registry of its own: several apps in one process (as in the tests) never share or
double-register a metric.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

import gistnet
from api.batching import Forward
from service.db.models import Job
from service.queue import JobKind, JobStatus

# Block counts are powers of two up to the largest request a server is likely to allow.
BLOCK_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# From a fast /gist answer (a few ms) to a slow upload or a cold model load (tens of s).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ApiMetrics:
    """Everything the API records, in one registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "gistnet_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gistnet_http_request_duration_seconds",
            "Time from a request's arrival to the start of its response (for an event "
            "stream: until the stream opens).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gist_request_blocks = Histogram(
            "gistnet_gist_request_blocks",
            "Blocks in each POST /gist request that reached the batching queue.",
            buckets=BLOCK_BUCKETS,
            registry=self.registry,
        )
        self.gist_batch_blocks = Histogram(
            "gistnet_gist_batch_blocks",
            "Blocks in each forward the batching queue ran (requests batched together).",
            buckets=BLOCK_BUCKETS,
            registry=self.registry,
        )
        # POST /gist's time split in two: waiting for a forward, then the forward itself.
        self.gist_queue_wait = Histogram(
            "gistnet_gist_queue_wait_seconds",
            "Time each POST /gist request waited in the batching queue for its forward.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gist_compute = Histogram(
            "gistnet_gist_compute_seconds",
            "Time each forward of the batching queue took (teacher and GistNet).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The versions a dashboard joins on (`* on() group_left(version) gistnet_build_info`).
        self.build_info = Gauge(
            "gistnet_build_info",
            "Always 1; the labels say what this API process runs.",
            ["version", "torch", "transformers", "python"],
            registry=self.registry,
        )
        self.build_info.labels(
            gistnet.__version__,
            version("torch"),
            version("transformers"),
            platform.python_version(),
        ).set(1)
        self.gist_queue_full = Counter(
            "gistnet_gist_queue_full",
            "POST /gist requests refused with 429 because the batching queue was full.",
            registry=self.registry,
        )

        self.generated_tokens = Counter(
            "gistnet_generated_tokens",
            "Tokens POST /generate made, streamed or not.",
            registry=self.registry,
        )
        self.context_lane_full = Counter(
            "gistnet_context_lane_full",
            "POST /score and /generate requests refused with 429 because the scoring and "
            "generating lane was full.",
            registry=self.registry,
        )

    def observe_forward(self, forward: Forward) -> None:
        self.gist_batch_blocks.observe(forward.blocks)
        self.gist_compute.observe(forward.compute_s)
        for wait in forward.waits_s:
            self.gist_queue_wait.observe(wait)

    def watch(self, app: Any) -> None:
        """Read the app's live state (batcher, engines, database) at every scrape."""
        self.registry.register(_LiveState(app))


class _LiveState:
    """Gauges computed at scrape time from the app's state."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []  # nothing to check for duplicates: these names are ours alone

    def collect(self) -> Iterator[Metric]:
        state = self.app.state
        batcher = getattr(state, "batcher", None)
        waiting = GaugeMetricFamily(
            "gistnet_gist_waiting_blocks", "Blocks waiting in the batching queue for a forward."
        )
        waiting.add_metric([], batcher.waiting_blocks if batcher is not None else 0)
        yield waiting

        lane = getattr(state, "context_lane", None)
        holding = GaugeMetricFamily(
            "gistnet_context_lane_requests",
            "POST /score and /generate requests waiting or running in their lane.",
        )
        holding.add_metric([], lane.holding if lane is not None else 0)
        yield holding

        engines = getattr(state, "engines", None)
        loaded = GaugeMetricFamily(
            "gistnet_engines_loaded", "Models whose teacher and GistNet are loaded in the API."
        )
        loaded.add_metric([], len(engines.loaded()) if engines is not None else 0)
        yield loaded

        sessionmaker = getattr(state, "sessionmaker", None)
        if sessionmaker is not None:
            yield _jobs_gauge(sessionmaker)


def _jobs_gauge(sessionmaker) -> GaugeMetricFamily:
    counts: dict[tuple[str, str], int] = {}
    with sessionmaker() as session:
        rows = session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
        )
        counts = {(kind, status): n for kind, status, n in rows}
    gauge = GaugeMetricFamily(
        "gistnet_jobs", "Jobs in the database, by kind and state.", labels=["kind", "state"]
    )
    # Every pair, zeros included: a series that appears only once non-zero breaks rate().
    for kind in JobKind:
        for status in JobStatus:
            gauge.add_metric([kind.value, status.value], counts.get((kind, status), 0))
    return gauge


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (`/jobs/{job_id}`, not
    `/jobs/7`, so the number of series stays bounded); requests that match no route are
    `unmatched`.

    A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: that one adds a
    task and a queue to every request, too much on the /gist hot path, and it would hold
    an event stream's response open to time it.
    """

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - started)

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start" and not recorded:
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException:
            if not recorded:  # the error middleware outside us answers 500
                record(500)
            raise
