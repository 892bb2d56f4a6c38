"""Idempotency-Key: a client that sends a POST again (its answer was lost) gets the first
answer and no second dataset or job, whether the retry comes later, at the same moment, or
after the API was killed mid-request."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from service.db.engine import session_scope
from service.db.models import Dataset
from service.settings import load_settings
from tests.private_servers import free_port
from tests.service_stack import ServiceProcess, wait_until

pytestmark = [pytest.mark.services]


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def _dataset(teacher: str, name: str = "idem") -> dict:
    return {
        "dataset_name": name,
        "tokenizer": teacher,
        "teacher_model": teacher,
        "splits": {"train": {"documents": ["a story about a fox " * 20]}},
    }


def _counts(client) -> tuple[int, int]:
    return client.get("/datasets").json()["count"], client.get("/jobs").json()["count"]


def test_the_same_post_datasets_twice_makes_one_dataset_and_answers_the_same(client, teacher):
    key = _key()
    before = _counts(client)
    first = client.post("/datasets", json=_dataset(teacher), headers=key)
    assert first.status_code == 202
    assert _counts(client) == (before[0] + 1, before[1] + 1)
    again = client.post("/datasets", json=_dataset(teacher), headers=key)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _counts(client) == (before[0] + 1, before[1] + 1)
    # Without a key, or with another one, the same body is a new request.
    assert client.post("/datasets", json=_dataset(teacher)).json() != first.json()
    assert client.post("/datasets", json=_dataset(teacher), headers=_key()).json() != first.json()


def test_the_same_key_with_another_body_is_422_and_makes_nothing(client, teacher):
    key = _key()
    client.post("/datasets", json=_dataset(teacher, "one"), headers=key)
    before = _counts(client)
    answer = client.post("/datasets", json=_dataset(teacher, "two"), headers=key)
    assert answer.status_code == 422
    assert "Idempotency-Key" in answer.json()["detail"] and "new key" in answer.json()["detail"]
    assert _counts(client) == before


@pytest.fixture
def model_of_our_own(api_stack, ready_dataset, trained_model) -> int:
    """Another model row on the trained checkpoint: evaluations made here must not become
    the shared model's latest one, which other tests look at."""
    from gistnet.checkpoint import read_checkpoint_info
    from service.db.models import Job
    from service.db.records import record_model
    from service.queue import JobKind, JobStatus, QueueName

    with session_scope(api_stack.settings.database_url) as session:
        job = Job(kind=JobKind.TRAIN, queue=QueueName.TRAIN, status=JobStatus.SUCCEEDED)
        session.add(job)
        session.flush()
        return record_model(
            session,
            job_id=job.id,
            dataset_id=ready_dataset["id"],
            split="train",
            checkpoint_path=f"jobs/{trained_model['job_id']}/gistnet.pt",
            info=read_checkpoint_info(trained_model["checkpoint"]),
            steps=3,
            final_loss=None,
            val_loss=None,
        ).id


def test_train_and_evaluations_take_a_key_too(client, ready_dataset, model_of_our_own):
    train = {"dataset_id": ready_dataset["id"], "training": {"max_steps": 5}}
    evaluation = {"model_id": model_of_our_own, "dataset_id": ready_dataset["id"]}
    for path, body in (("/train", train), ("/evaluations", evaluation)):
        key = _key()
        first = client.post(path, json=body, headers=key)
        assert first.status_code == 202, first.text
        before = _counts(client)
        assert client.post(path, json=body, headers=key).json() == first.json()
        assert _counts(client) == before
        # A key names one request on one route: the same key elsewhere is another request.
    key = _key()
    job = client.post("/train", json=train, headers=key).json()["job_id"]
    assert client.post("/evaluations", json=evaluation, headers=key).json()["job_id"] != job


def test_retries_at_the_same_moment_make_one_job(client, ready_dataset):
    key, body = _key(), {"dataset_id": ready_dataset["id"], "training": {"max_steps": 5}}
    before = _counts(client)
    answers, start = [], threading.Barrier(5)

    def retry():
        start.wait()
        answers.append(client.post("/train", json=body, headers=key))

    threads = [threading.Thread(target=retry) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert _counts(client) == (before[0], before[1] + 1)


def test_a_key_expires(api_stack, teacher):
    settings = load_settings(
        **{**api_stack.settings.model_dump(exclude={"api_key"}), "idempotency_ttl_s": 0.5}
    )
    with TestClient(create_app(settings)) as client:
        key = _key()
        first = client.post("/datasets", json=_dataset(teacher), headers=key).json()
        time.sleep(0.6)
        later = client.post("/datasets", json=_dataset(teacher), headers=key)
        assert later.status_code == 202 and later.json()["job_id"] != first["job_id"]


def test_a_job_the_broker_refused_does_not_keep_its_key(api_stack, teacher, client):
    key = _key()
    settings = load_settings(
        **{
            **api_stack.settings.model_dump(exclude={"api_key"}),
            "broker_url": "redis://127.0.0.1:1/0",
        }
    )
    with TestClient(create_app(settings)) as broken:
        refused = broken.post("/datasets", json=_dataset(teacher), headers=key)
        assert refused.status_code == 503 and refused.headers["retry-after"]
    # A retry once the broker is back runs the request anew, not "here is your failed job".
    retried = client.post("/datasets", json=_dataset(teacher), headers=key)
    assert retried.status_code == 202
    assert client.get(retried.json()["status_url"]).json()["status"] == "queued"


def test_a_bad_key_is_422(client, teacher):
    for key in ("has spaces", "x" * 201, "tab\tinside"):
        answer = client.post("/datasets", json=_dataset(teacher), headers={"Idempotency-Key": key})
        assert answer.status_code == 422 and "Idempotency-Key" in answer.json()["detail"]


@pytest.mark.slow
def test_a_retry_after_the_api_was_killed_mid_request_gets_the_first_answer(
    api_stack, teacher, tmp_path
):
    name, key = f"killed-{uuid.uuid4().hex[:6]}", _key()
    body = httpx.Request("POST", "http://x/datasets", json=_dataset(teacher, name)).content

    def serve(port: int) -> ServiceProcess:
        api = ServiceProcess(
            ["serve", "--no-worker", "--no-upgrade", "--port", str(port)],
            env=api_stack.env,
            log_path=tmp_path / f"api-{port}.log",
        ).start()
        api.wait_for_log("Application startup complete")
        return api

    def datasets_named() -> int:
        with session_scope(api_stack.settings.database_url) as session:
            return session.scalar(select(func.count()).where(Dataset.name == name))

    port = free_port()
    first = serve(port)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST /datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {key['Idempotency-Key']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Killed as soon as the dataset is committed: the client never reads an answer.
        wait_until(lambda: datasets_named() == 1, timeout=60, interval=0.01, what="the commit")
        first.kill()

    port = free_port()
    second = serve(port)
    try:
        retried = httpx.post(
            f"http://127.0.0.1:{port}/datasets",
            content=body,
            headers={**key, "content-type": "application/json"},
            timeout=60,
        )
    finally:
        second.stop()
    assert retried.status_code == 202
    assert retried.headers["idempotent-replayed"] == "true"
    assert datasets_named() == 1
    with session_scope(api_stack.settings.database_url) as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == name))
    assert retried.json()["dataset_id"] == dataset_id


def test_the_same_upload_twice_with_a_key_makes_one_dataset_and_keeps_one_copy(
    client, api_stack, teacher
):
    uploads = api_stack.settings.data_root.resolve() / "uploads"
    config = {"config": json.dumps({**_dataset(teacher), "splits": {}})}

    def upload(story: bytes, key: dict):
        return client.post(
            "/datasets", data=config, files=[("train", ("a.txt", story, "text/plain"))], headers=key
        )

    key = _key()
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    first = upload(b"Once upon a time. " * 40, key)
    assert first.status_code == 202, first.text
    again = upload(b"Once upon a time. " * 40, key)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(set(uploads.iterdir()) - before) == 1  # the second copy was not kept
    other = upload(b"Another story entirely. " * 40, key)
    assert other.status_code == 422 and "different POST /datasets body" in other.json()["detail"]
    assert upload(b"x" * 80, {"Idempotency-Key": "not a key"}).status_code == 422
