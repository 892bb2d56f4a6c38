"""A stack of each kind (embedded SQLite, and PostgreSQL + Redis) with one real Celery
worker subprocess, shared by the worker tests, and a dataset and a model made through the
API on it."""

from __future__ import annotations

import pytest

from tests.service_stack import (
    REDIS_DB,
    STACK_KINDS,
    dataset_body,
    sample_teacher,
    stack_of_kind,
    start_worker,
    tiny_documents,
    train_body,
    wait_for_job,
)


@pytest.fixture(scope="session")
def teacher() -> str:
    return sample_teacher()


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return tiny_documents()


@pytest.fixture(scope="session", params=STACK_KINDS)
def stack(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"workers-{request.param}")
    # Runs that ask for MLflow tracking log to a folder of the stack's (off unless asked).
    mlflow = root / "mlruns"
    with stack_of_kind(
        request.param, root, redis_db=REDIS_DB["workers"], mlflow_tracking_uri=str(mlflow)
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def stack_worker(stack):
    """One Celery worker for both queues."""
    worker = start_worker(stack)
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def stack_client(stack):
    """An HTTP client on the app (lifespan included), configured for the stack."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(stack.settings)) as client:
        yield client


@pytest.fixture(scope="session")
def stack_dataset(stack_client, stack_worker, teacher, documents):
    """A dataset prepared through POST /datasets from inline documents: GET /datasets/{id}."""
    accepted = stack_client.post("/datasets", json=dataset_body(teacher, documents))
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    return stack_client.get(f"/datasets/{accepted.json()['dataset_id']}").json()


@pytest.fixture(scope="session")
def stack_model(stack_client, stack_dataset):
    """A model trained through POST /train: (its job, GET /models/{id})."""
    accepted = stack_client.post("/train", json=train_body(stack_dataset["id"], max_steps=12))
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    return job, stack_client.get(f"/models/{job['result']['model_id']}").json()
