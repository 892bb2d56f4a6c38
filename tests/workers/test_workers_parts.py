"""Datasets prepared in parts by real Celery worker processes, on each kind of stack: two
workers share the parts of one dataset, and a token-only dataset is trained, evaluated and
served through the API."""

from __future__ import annotations

import numpy as np
import pytest

from gistnet.datasets import open_split
from tests.service_stack import dataset_body, start_worker, train_body, wait_for_job

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def second_worker(stack, stack_worker):
    """A second worker on both queues, beside the session's."""
    worker = start_worker(stack, name="second-worker")
    yield worker
    worker.stop()


def test_a_dataset_in_4_parts_by_2_workers_holds_the_rows_of_the_1_part_dataset(
    stack_client, stack, stack_dataset, second_worker, teacher, documents
):
    body = dataset_body(teacher, documents)  # the session's 1-part dataset, in 4 shards
    body["splits"]["train"]["shards"] = 4
    accepted = stack_client.post("/datasets", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"], timeout=240)
    assert job["status"] == "succeeded", job

    parts = job["parts"]["data"]
    assert [p["shard"] for p in parts] == [
        *(f"train-{i:05d}-of-00004.arrow" for i in range(4)),
        "validation.arrow",
    ]
    assert {p["status"] for p in parts} == {"succeeded"}
    # Each worker runs one task at a time and the first part a worker takes waits for its
    # teacher to load: the other worker takes the next part meanwhile.
    assert len({p["worker"] for p in parts}) == 2, parts

    dataset = stack_client.get(f"/datasets/{accepted.json()['dataset_id']}").json()
    assert dataset["status"] == "ready" and dataset["parts"]["by_status"] == {"succeeded": 5}
    assert dataset["fingerprint"] == stack_dataset["fingerprint"]
    one = open_split(stack.settings.artifact_path(stack_dataset["path"]))
    four = open_split(stack.settings.artifact_path(dataset["path"]))
    assert len(four.paths) == 4 and four.num_examples == one.num_examples
    np.testing.assert_array_equal(four.context_input_ids[:], one.context_input_ids[:])
    np.testing.assert_allclose(four.teacher_hidden[:], one.teacher_hidden[:], atol=1e-5, rtol=0)


def test_a_token_only_dataset_in_parts_trains_evaluates_and_serves_gists(
    stack_client, second_worker, teacher, documents
):
    body = dataset_body(teacher, documents, name="tokens", teacher_states="none")
    body["splits"]["train"]["shards"] = 2
    accepted = stack_client.post("/datasets", json=body).json()
    assert wait_for_job(stack_client, accepted["job_id"], timeout=240)["status"] == "succeeded"
    dataset = stack_client.get(f"/datasets/{accepted['dataset_id']}").json()
    assert dataset["teacher_states"] == "none" and dataset["teacher_hidden_size"] == 128

    run = train_body(dataset["id"], max_steps=4, objective="substitution")
    trained = stack_client.post("/train", json=run)
    assert trained.status_code == 202, trained.text
    job = wait_for_job(stack_client, trained.json()["job_id"], timeout=240)
    assert job["status"] == "succeeded", job
    model = stack_client.get(f"/models/{job['result']['model_id']}").json()
    assert model["hidden_size"] == 128 and model["final_loss"] is not None

    gists = stack_client.post("/gist", json={"model_id": model["id"], "blocks": [[5] * 32]})
    assert gists.status_code == 200 and gists.json()["dim"] == 128

    evaluation = stack_client.post(
        "/evaluations",
        json={
            "model_id": model["id"],
            "dataset_id": dataset["id"],
            "max_examples": 8,
            "bootstrap_samples": 10,
        },
    ).json()
    assert wait_for_job(stack_client, evaluation["job_id"], timeout=240)["status"] == "succeeded"
    report = stack_client.get(evaluation["evaluation_url"]).json()["report"]
    assert report["dataset"]["teacher_states"] == "none"
    assert report["conditions"]["gist"]["nll"]["value"] > 0
