"""A dataset prepared in parts, step by step: the worker's own tasks run in this process, one
at a time, on a stack of each kind (embedded SQLite + SQLite broker, PostgreSQL + Redis)
with no worker listening, so each test decides what happens between two steps: a shard
damaged after its part finished, a part that died after writing its shard, a part whose
input is bad, a cancel, a worker lost between a part's end and the finish."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from service.db.engine import session_scope
from service.db.jobs import claim_job
from service.db.models import Job, utcnow
from service.db.parts import job_parts
from service.queue import TASK_OF_KIND, JobKind
from tests.service_stack import REDIS_DB, STACK_KINDS, dataset_body, stack_of_kind

pytestmark = [pytest.mark.services]


@pytest.fixture(params=STACK_KINDS)
def steps(request, tmp_path, teacher):
    """(client, stack, tasks): the app, its settings, and the worker's tasks bound to an app
    of the same settings, called in-process."""
    from workers.celery_app import create_celery_app

    with stack_of_kind(request.param, tmp_path, redis_db=REDIS_DB["workers"]) as stack:
        app = create_celery_app(stack.settings)
        app.loader.import_default_modules()  # what a worker does at start: registers the tasks
        tasks = {kind: app.tasks[TASK_OF_KIND[kind]] for kind in JobKind}
        with TestClient(create_app(stack.settings)) as client:
            yield client, stack, tasks


def _post_dataset(client, teacher, documents, *, shards=2, **extra) -> dict:
    body = dataset_body(teacher, documents, teacher_states="none", **extra)
    body["splits"]["train"]["shards"] = shards
    accepted = client.post("/datasets", json=body)
    assert accepted.status_code == 202, accepted.text
    return accepted.json()


def _parts(stack, job_id) -> list[int]:
    with session_scope(stack.settings.database_url) as session:
        return [p.id for p in job_parts(session, job_id=job_id)]


def _fanned_out(client, stack, tasks, teacher, documents, **extra) -> tuple[dict, list[int]]:
    accepted = _post_dataset(client, teacher, documents, **extra)
    assert tasks[JobKind.PREPARE](accepted["job_id"]) == "detached"
    parent = client.get(f"/jobs/{accepted['job_id']}").json()
    assert parent["status"] == "running" and parent["heartbeat_at"] is None
    return accepted, _parts(stack, accepted["job_id"])


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_last_part_to_finish_writes_the_metadata_and_parts_show_their_progress(
    steps, teacher, documents
):
    client, stack, tasks = steps
    accepted, parts = _fanned_out(client, stack, tasks, teacher, documents)
    assert len(parts) == 3  # train in 2 shards, validation in 1
    shown = client.get(f"/datasets/{accepted['dataset_id']}").json()
    assert shown["status"] == "pending" and shown["parts"]["by_status"] == {"queued": 3}
    for part in parts:
        assert tasks[JobKind.PREPARE_PART](part) == "succeeded"
    dataset = client.get(f"/datasets/{accepted['dataset_id']}").json()
    assert dataset["status"] == "ready", dataset
    assert dataset["teacher_states"] == "none" and dataset["teacher_hidden_size"] == 128
    assert [s["path"] for s in dataset["splits"]["train"]["shards"]] == [
        f"datasets/{accepted['dataset_id']}/train-0000{i}-of-00002.arrow" for i in range(2)
    ]
    assert dataset["parts"]["by_status"] == {"succeeded": 3}
    assert dataset["parts"]["examples"] == sum(s["examples"] for s in dataset["splits"].values())
    parent = client.get(f"/jobs/{accepted['job_id']}").json()
    assert parent["status"] == "succeeded" and parent["attempt"] == 1
    assert [p["shard"] for p in parent["parts"]["data"]] == [
        "train-00000-of-00002.arrow",
        "train-00001-of-00002.arrow",
        "validation.arrow",
    ]
    one = client.get(f"/jobs/{parts[0]}").json()
    assert one["kind"] == "prepare_part" and one["queue"] == "prep"
    assert (one["parent_id"], one["part_index"], one["part_count"]) == (accepted["job_id"], 0, 3)
    assert (
        one["progress"]["detail"]["examples"] > 0 and len(one["progress"]["detail"]["sha256"]) == 64
    )


def test_a_damaged_part_fails_the_dataset_naming_it(steps, teacher, documents):
    client, stack, tasks = steps
    accepted, parts = _fanned_out(client, stack, tasks, teacher, documents)
    tasks[JobKind.PREPARE_PART](parts[0])
    tasks[JobKind.PREPARE_PART](parts[1])
    folder = stack.settings.artifact_path(f"datasets/{accepted['dataset_id']}")
    _flip_a_byte(folder / "train-00000-of-00002.arrow")  # after its part recorded its checksum
    tasks[JobKind.PREPARE_PART](parts[2])  # the last part: it finishes the dataset

    dataset = client.get(f"/datasets/{accepted['dataset_id']}").json()
    assert dataset["status"] == "failed"
    assert "train-00000-of-00002.arrow" in dataset["error"]
    assert "checksum" in dataset["error"]
    job = client.get(f"/jobs/{accepted['job_id']}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "ShardError"
    assert not (folder / "metadata.yaml").exists()


def test_a_redelivered_part_whose_shard_is_complete_and_verified_is_not_redone(
    steps, teacher, documents
):
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_part
    from workers.recovery import sweep

    client, stack, tasks = steps
    accepted, parts = _fanned_out(client, stack, tasks, teacher, documents)
    # A worker takes part 2, writes its shard and manifest, and dies before recording it.
    with session_scope(stack.settings.database_url) as session:
        claim_job(
            session,
            job_id=parts[1],
            worker="lost-host:1",
            device="cpu",
            stale_before=utcnow(),
            max_attempts=3,
        )
        plan = session.get(Job, accepted["job_id"]).params["plan"]
    folder = stack.settings.artifact_path(f"datasets/{accepted['dataset_id']}")
    body = dataset_body(teacher, documents, teacher_states="none")
    body["splits"]["train"]["shards"] = 2
    prepare_part(
        validate_dataset_config(body), plan=plan, split="train", index=1, output_dir=folder
    )
    shard = folder / "train-00001-of-00002.arrow"
    written = shard.stat().st_mtime_ns
    with session_scope(stack.settings.database_url) as session:
        session.execute(
            update(Job).where(Job.id == parts[1]).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    requeued = sweep(settings=stack.settings, app=next(iter(tasks.values())).app).requeued
    assert [j.id for j in requeued] == [parts[1]]

    for part in parts:
        tasks[JobKind.PREPARE_PART](part)
    again = client.get(f"/jobs/{parts[1]}").json()
    assert again["status"] == "succeeded" and again["attempt"] == 2
    assert again["progress"]["detail"]["reused"] is True
    assert shard.stat().st_mtime_ns == written
    assert client.get(f"/datasets/{accepted['dataset_id']}").json()["status"] == "ready"


def test_a_failing_part_fails_the_dataset_with_its_reason_and_stops_the_others(
    steps, teacher, documents
):
    client, stack, tasks = steps
    lines = [json.dumps({"text": d}) for d in documents[:10]]
    lines[7] = '{"txt": "a line without its text"}'  # in the second half: part 2's range
    (stack.settings.data_root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    body = dataset_body(teacher, documents, teacher_states="none")
    body["splits"]["train"] = {"source": "corpus.jsonl", "shards": 2}
    accepted = client.post("/datasets", json=body).json()
    tasks[JobKind.PREPARE](accepted["job_id"])
    parts = _parts(stack, accepted["job_id"])

    assert tasks[JobKind.PREPARE_PART](parts[1]) == "failed"
    dataset = client.get(f"/datasets/{accepted['dataset_id']}").json()
    assert dataset["status"] == "failed"
    assert dataset["error"].startswith("part 2 of 3 (train-00001-of-00002.arrow) failed: ")
    assert "corpus.jsonl:8: each line of a JSON-lines source must be an object" in dataset["error"]
    job = client.get(f"/jobs/{accepted['job_id']}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "PartFailed"
    others = [client.get(f"/jobs/{p}").json() for p in (parts[0], parts[2])]
    assert [o["status"] for o in others] == ["cancelled", "cancelled"]
    assert tasks[JobKind.PREPARE_PART](parts[0]) == "skipped"


def test_cancelling_the_dataset_cancels_its_parts(steps, teacher, documents):
    client, stack, tasks = steps
    accepted, parts = _fanned_out(client, stack, tasks, teacher, documents)
    tasks[JobKind.PREPARE_PART](parts[0])
    answer = client.post(f"/jobs/{accepted['job_id']}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    statuses = [client.get(f"/jobs/{p}").json()["status"] for p in parts]
    assert statuses == ["succeeded", "cancelled", "cancelled"]
    assert client.get(f"/datasets/{accepted['dataset_id']}").json()["status"] == "cancelled"
    assert tasks[JobKind.PREPARE_PART](parts[1]) == "skipped"


def test_a_dataset_whose_finisher_died_is_finished_after_a_sweep(steps, teacher, documents):
    from workers.recovery import sweep
    from workers.runner import run_job
    from workers.tasks import _prepare_part

    client, stack, tasks = steps
    accepted, parts = _fanned_out(client, stack, tasks, teacher, documents)
    for part in parts[:-1]:
        tasks[JobKind.PREPARE_PART](part)
    # The last part ends, and its worker dies before it can take the dataset's job over.
    assert run_job(settings=stack.settings, job_id=parts[-1], work=_prepare_part) == "succeeded"
    app = next(iter(tasks.values())).app
    assert sweep(settings=stack.settings, app=app).requeued == []  # not before the timeout
    with session_scope(stack.settings.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.parent_id == accepted["job_id"])
            .values(finished_at=utcnow() - timedelta(hours=1))
        )
    assert [j.id for j in sweep(settings=stack.settings, app=app).requeued] == [accepted["job_id"]]
    assert tasks[JobKind.PREPARE](accepted["job_id"]) == "succeeded"
    assert client.get(f"/datasets/{accepted['dataset_id']}").json()["status"] == "ready"
