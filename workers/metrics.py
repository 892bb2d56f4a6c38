"""A worker's Prometheus metrics: jobs started and finished, durations, training and
preparation work done (counters: throughput is their `rate()`), and the build's versions.

Jobs run in the pool's child processes, while a scrape must reach one port. So with
GISTNET_WORKER_METRICS_PORT set, the worker's main process (at `worker_init`, before the
pool forks) points prometheus_client's multiprocess mode at a folder
(PROMETHEUS_MULTIPROC_DIR, or a fresh temporary one), and serves what every child wrote
there on that port. prometheus_client picks its storage when it is first imported, so
nothing here imports it before that: a worker without a metrics port records nothing
and never imports it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import SimpleNamespace

from celery.signals import worker_init

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a few seconds of preparation to a day of training.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


@worker_init.connect
def _serve_metrics(sender=None, **_) -> None:
    from service.settings import get_settings

    app = getattr(sender, "app", None)
    settings = getattr(app, "settings", None) or get_settings()
    if settings.worker_metrics_port:
        serve_worker_metrics(settings.worker_metrics_port)


def serve_worker_metrics(port: int, host: str = "0.0.0.0") -> None:
    """In the worker's main process, before the pool forks: multiprocess mode on, and
    the children's metrics served on `port`."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        # Files of an earlier run would add their counts to this one's.
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="gistnet-worker-metrics-")
        os.environ[MULTIPROC_ENV] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if "prometheus_client" in sys.modules:
        from prometheus_client import values

        if "MultiProcess" not in getattr(values.ValueClass, "__name__", ""):
            log.warning("prometheus_client was imported before %s was set", MULTIPROC_ENV)

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%s/metrics (from %s)", host, port, folder)


@cache
def _metrics() -> SimpleNamespace | None:
    """The metric objects, made on first use in the process that records (a pool child);
    None when the worker serves no metrics."""
    if not os.environ.get(MULTIPROC_ENV):
        return None
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        started=Counter(
            "gistnet_worker_jobs_started", "Jobs this worker claimed and began.", ["kind"]
        ),
        finished=Counter(
            "gistnet_worker_jobs_finished",
            "Jobs this worker ended, by outcome (succeeded, failed, cancelled, or lost to "
            "another run).",
            ["kind", "outcome"],
        ),
        duration=Histogram(
            "gistnet_worker_job_duration_seconds",
            "Wall time of a job's run on this worker, by outcome.",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS,
        ),
        train_steps=Counter("gistnet_worker_train_steps", "Optimizer steps taken."),
        train_examples=Counter("gistnet_worker_train_examples", "Examples trained on."),
        prep_tokens=Counter("gistnet_worker_prep_tokens", "Tokens read by dataset preparation."),
        build_info=_build_info(Gauge),
    )


def _build_info(gauge_class):
    """gistnet_worker_build_info: always 1, its labels the versions this worker runs."""
    import platform
    from importlib.metadata import version

    import gistnet

    gauge = gauge_class(
        "gistnet_worker_build_info",
        "Always 1; the labels say what this worker runs.",
        ["version", "torch", "transformers", "python"],
        multiprocess_mode="max",
    )
    gauge.labels(
        gistnet.__version__, version("torch"), version("transformers"), platform.python_version()
    ).set(1)
    return gauge


def job_started(kind: str) -> None:
    if (m := _metrics()) is not None:
        m.started.labels(kind).inc()


def job_finished(kind: str, outcome: str, seconds: float) -> None:
    if (m := _metrics()) is not None:
        m.finished.labels(kind, outcome).inc()
        m.duration.labels(kind, outcome).observe(seconds)


def train_step(*, batch_size: int) -> None:
    """The trainer reports after every optimizer step."""
    if (m := _metrics()) is not None:
        m.train_steps.inc()
        m.train_examples.inc(batch_size)


class PrepMeter:
    """Turns preparation's per-split running totals into counter increments."""

    def __init__(self):
        self.split, self.tokens = None, 0

    def __call__(self, split: str, tokens: int) -> None:
        m = _metrics()
        if m is None:
            return
        if split != self.split:
            self.split, self.tokens = split, 0
        m.prep_tokens.inc(max(0, tokens - self.tokens))
        self.tokens = tokens
