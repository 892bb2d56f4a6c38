"""A worker killed mid-job: the job is found by its stale heartbeat, re-queued, and a new
worker resumes it (training, from its resume checkpoint) or runs it again (a part of a
dataset, after which the dataset finishes). On both brokers: the SQLite broker never
redelivers a message whose worker died, and Redis only after its (long) visibility timeout,
so neither can be what brings the job back."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.service_stack import (
    REDIS_DB,
    dataset_body,
    make_stack,
    postgres_database,
    redis_database,
    start_worker,
    train_body,
    wait_for_job,
    wait_until,
)

pytestmark = [pytest.mark.slow]

STEPS = 100


@pytest.fixture(params=["sqlite-broker", "redis-broker"])
def crash_stack(request, tmp_path):
    """A stack of its own (the session's worker must not take the job): SQLite records and
    the SQLite broker, or PostgreSQL records and a Redis database of its own."""
    if request.param == "sqlite-broker":
        yield make_stack(
            tmp_path,
            database_url=f"sqlite:///{tmp_path}/records.sqlite",
            broker_url=f"sqla+sqlite:///{tmp_path}/broker.sqlite",
        )
        return
    with postgres_database() as database_url, redis_database(REDIS_DB["crash"]) as broker:
        yield make_stack(tmp_path, database_url=database_url, **broker)


def test_killed_worker_job_resumes_from_checkpoint_on_a_new_worker(crash_stack, teacher, documents):
    first = start_worker(crash_stack, name="first-worker")
    second = None
    try:
        with TestClient(create_app(crash_stack.settings)) as client:
            accepted = client.post("/datasets", json=dataset_body(teacher, documents)).json()
            assert wait_for_job(client, accepted["job_id"])["status"] == "succeeded"
            job_id = client.post(
                "/train", json=train_body(accepted["dataset_id"], max_steps=STEPS)
            ).json()["job_id"]
            resume = crash_stack.settings.artifact_path(f"jobs/{job_id}/resume.pt")
            # Kill as soon as the first checkpoint (step 5) exists, long before the last step.
            wait_until(resume.exists, timeout=90, interval=0.01, what="a resume checkpoint")
            running = client.get(f"/jobs/{job_id}").json()
            assert running["status"] == "running" and running["attempt"] == 1

            first.kill()  # SIGKILL: no clean-up, no message handed back
            second = start_worker(crash_stack, name="second-worker")
            job = wait_for_job(client, job_id, timeout=120)

            assert job["status"] == "succeeded", job
            assert job["attempt"] == 2
            assert job["worker"] != running["worker"]
            assert job["error"] is None
            curve = client.get(f"/jobs/{job_id}/metrics").json()["data"]
            assert [p["step"] for p in curve] == list(range(1, STEPS + 1))
            resumed_at = min(p["step"] for p in curve if p["attempt"] == 2)
            # The second run continued from a checkpoint (every 5 steps), not from step 1.
            assert resumed_at > 1 and (resumed_at - 1) % 5 == 0
            assert client.get(f"/models/{job['result']['model_id']}").status_code == 200
            assert not resume.exists()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_worker_killed_during_a_part_leaves_the_dataset_to_finish(
    crash_stack, teacher, documents
):
    first = start_worker(crash_stack, name="first-worker")
    second = None
    try:
        with TestClient(create_app(crash_stack.settings)) as client:
            body = dataset_body(teacher, documents)
            body["splits"]["train"]["shards"] = 4
            accepted = client.post("/datasets", json=body).json()

            def running_part():
                parts = client.get(f"/jobs/{accepted['job_id']}").json()["parts"]
                return next(
                    (p for p in (parts or {"data": []})["data"] if p["status"] == "running"), None
                )

            # The first part a worker runs loads the teacher: seconds in which to kill it.
            part = wait_until(running_part, timeout=90, interval=0.01, what="a part running")
            first.kill()  # SIGKILL: no clean-up, no message handed back
            second = start_worker(crash_stack, name="second-worker")
            job = wait_for_job(client, accepted["job_id"], timeout=180)

            assert job["status"] == "succeeded", job
            killed = client.get(f"/jobs/{part['job_id']}").json()
            assert killed["status"] == "succeeded" and killed["attempt"] == 2
            assert killed["worker"] != part["worker"] and killed["error"] is None
            dataset = client.get(f"/datasets/{accepted['dataset_id']}").json()
            assert dataset["status"] == "ready"
            assert dataset["splits"]["train"]["examples"] == sum(
                s["examples"] for s in dataset["splits"]["train"]["shards"]
            )
    finally:
        first.stop()
        if second is not None:
            second.stop()
