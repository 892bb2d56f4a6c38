"""A PostgreSQL + Redis stack with one real Celery worker subprocess, shared by the
worker tests, and a dataset and a model made through the API on it."""

from __future__ import annotations

import pytest

from tests.service_stack import (
    REDIS_DB,
    dataset_body,
    make_stack,
    postgres_database,
    redis_database,
    sample_teacher,
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


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory):
    with postgres_database() as database_url, redis_database(REDIS_DB["workers"]) as broker:
        yield make_stack(tmp_path_factory.mktemp("pg-stack"), database_url=database_url, **broker)


@pytest.fixture(scope="session")
def pg_worker(pg_stack):
    """One Celery worker for both queues."""
    worker = start_worker(pg_stack)
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def pg_client(pg_stack):
    """An HTTP client on the app (lifespan included), configured for the stack."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(pg_stack.settings)) as client:
        yield client


@pytest.fixture(scope="session")
def pg_dataset(pg_client, pg_worker, teacher, documents):
    """A dataset prepared through POST /datasets from inline documents: GET /datasets/{id}."""
    accepted = pg_client.post("/datasets", json=dataset_body(teacher, documents))
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(pg_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    return pg_client.get(f"/datasets/{accepted.json()['dataset_id']}").json()


@pytest.fixture(scope="session")
def pg_model(pg_client, pg_dataset):
    """A model trained through POST /train: (its job, GET /models/{id})."""
    accepted = pg_client.post("/train", json=train_body(pg_dataset["id"], max_steps=12))
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(pg_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    return job, pg_client.get(f"/models/{job['result']['model_id']}").json()
