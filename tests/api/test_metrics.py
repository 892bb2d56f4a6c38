"""GET /metrics on a running `gistnet serve`, and its worker's metrics port, scraped before,
during and after a preparation, a training run and a /gist call: the counters move by
exactly what happened."""

from __future__ import annotations

import platform
from importlib.metadata import version

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gistnet
from tests.service_stack import (
    dataset_body,
    sample_teacher,
    tiny_documents,
    train_body,
    wait_for_job,
    wait_until,
)

pytestmark = [pytest.mark.slow]

TRAIN_STEPS = 40


def scrape(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_want_the_api_key(running_service):
    answer = httpx.get(f"{running_service.url}/metrics")
    assert answer.status_code == 401


def test_api_and_worker_counters_move_with_a_run(running_service):
    api = running_service.http()
    worker_url = f"http://127.0.0.1:{running_service.stack.settings.worker_metrics_port}/metrics"

    def api_metrics():
        answer = api.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        return scrape(answer.text)

    def worker_metrics():
        return scrape(httpx.get(worker_url, timeout=10).text)

    before, worker_before = api_metrics(), worker_metrics()

    accepted = api.post("/datasets", json=dataset_body(sample_teacher(), tiny_documents(8)))
    assert accepted.status_code == 202, accepted.text
    assert wait_for_job(api, accepted.json()["job_id"])["status"] == "succeeded"
    dataset = api.get(f"/datasets/{accepted.json()['dataset_id']}").json()

    started = api.post("/train", json=train_body(dataset["id"], max_steps=TRAIN_STEPS))
    job_id = started.json()["job_id"]
    # Once the worker claims the job, its started counter moves (it runs on for a while).
    wait_until(
        lambda: (
            value(worker_metrics(), "gistnet_worker_jobs_started_total", kind="train")
            == value(worker_before, "gistnet_worker_jobs_started_total", kind="train") + 1
        ),
        timeout=60,
        what="the worker to count the training job started",
    )
    job = wait_for_job(api, job_id)
    assert job["status"] == "succeeded", job

    blocks = np.random.default_rng(0).integers(0, 500, size=(3, 32)).tolist()
    assert api.post("/gist", json={"blocks": blocks}).status_code == 200
    assert api.get("/jobs/999999").status_code == 404

    after, worker_after = api_metrics(), worker_metrics()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    def worker_moved(name, **labels):
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    # Requests by route template and status, and their latency.
    assert moved("gistnet_http_requests_total", route="/datasets", method="POST", status="202") == 1
    assert moved("gistnet_http_requests_total", route="/train", method="POST", status="202") == 1
    assert (
        moved("gistnet_http_requests_total", route="/jobs/{job_id}", method="GET", status="404")
        == 1
    )
    assert moved("gistnet_http_request_duration_seconds_count", route="/gist", method="POST") == 1
    # /gist: one request of three blocks, batched into one forward; its model stays loaded.
    assert moved("gistnet_gist_request_blocks_count") == 1
    assert moved("gistnet_gist_request_blocks_sum") == 3
    assert moved("gistnet_gist_batch_blocks_sum") == 3
    # Its time, split: waiting in the queue for a forward, and the forward.
    assert moved("gistnet_gist_queue_wait_seconds_count") == 1
    assert moved("gistnet_gist_compute_seconds_count") == 1
    assert moved("gistnet_gist_compute_seconds_sum") > 0
    assert value(after, "gistnet_engines_loaded") >= 1
    assert value(after, "gistnet_gist_waiting_blocks") == 0
    # Jobs by kind and state, from the database.
    assert moved("gistnet_jobs", kind="prepare", state="succeeded") == 1
    assert moved("gistnet_jobs", kind="train", state="succeeded") == 1

    # The worker's own: jobs started and finished, durations, throughput.
    assert worker_moved("gistnet_worker_jobs_started_total", kind="prepare") == 1
    assert worker_moved("gistnet_worker_jobs_started_total", kind="train") == 1
    assert (
        worker_moved("gistnet_worker_jobs_finished_total", kind="train", outcome="succeeded") == 1
    )
    assert (
        worker_moved("gistnet_worker_job_duration_seconds_count", kind="train", outcome="succeeded")
        == 1
    )
    assert worker_moved("gistnet_worker_train_steps_total") == TRAIN_STEPS
    assert worker_moved("gistnet_worker_train_examples_total") == TRAIN_STEPS * 8
    tokens = sum(split["tokens"] for split in dataset["splits"].values())
    assert worker_moved("gistnet_worker_prep_tokens_total") == tokens
    # Throughput is rate() of those counters: no gauge of a rate.
    names = {name for name, _ in [*after, *worker_after]}
    assert not [name for name in names if "per_second" in name]

    # The versions each process runs, as labels of a constant 1.
    versions = {
        "version": gistnet.__version__,
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
    }
    assert value(after, "gistnet_build_info", **versions) == 1
    assert value(worker_after, "gistnet_worker_build_info", **versions) == 1
