"""GET /jobs/{id}/logs with a real worker: what the worker logged while it ran the job,
read from the database whichever process ran it, and followed as it runs."""

from __future__ import annotations

import json

from service.db.engine import session_scope
from service.db.records import create_dataset
from service.queue import JobKind, celery_client, send_job
from tests.service_stack import dataset_body, train_body, wait_for_job


def _events(stream) -> list[tuple[str, dict]]:
    """(event, data) of each Server-Sent Event, until the stream closes."""
    events, event = [], None
    for line in stream.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((event, json.loads(line.removeprefix("data: "))))
    return events


def test_a_finished_job_lists_what_its_worker_logged_from_start_to_end(stack_client, stack_model):
    job, model = stack_model
    answer = stack_client.get(f"/jobs/{job['id']}/logs")
    assert answer.status_code == 200
    body = answer.json()
    messages = [line["message"] for line in body["data"]]
    assert body["count"] == len(messages) >= 4
    assert f"job {job['id']} (train) attempt 1 started" in messages[0]
    assert any("training on dataset" in m and "for 12 steps" in m for m in messages)
    assert any(m.startswith(f"checkpoint {model['checkpoint_path']} written") for m in messages)
    assert "recording it succeeded" in messages[-1]
    assert {line["attempt"] for line in body["data"]} == {1}
    assert {line["worker"] for line in body["data"]} == {job["worker"]}
    ids = [line["id"] for line in body["data"]]
    assert ids == sorted(ids)

    last = stack_client.get(f"/jobs/{job['id']}/logs", params={"tail": 1}).json()
    assert [line["message"] for line in last["data"]] == messages[-1:]
    assert last["count"] == body["count"]
    after = stack_client.get(f"/jobs/{job['id']}/logs", params={"after_id": ids[1]}).json()
    assert [line["id"] for line in after["data"]] == ids[2:]


def test_a_failed_job_logs_the_error_with_its_traceback(
    stack, stack_client, stack_worker, teacher, documents, tmp_path
):
    # The teacher folder is gone when the job runs: the row is made as the API makes it.
    body = dataset_body(str(tmp_path / "teacher-that-was-moved"), documents)
    with session_scope(stack.settings.database_url) as session:
        _, job = create_dataset(session, name="orphan-logs", config=body)
        job_id = job.id
    send_job(celery_client(stack.settings), job_id=job_id, kind=JobKind.PREPARE)
    assert wait_for_job(stack_client, job_id)["status"] == "failed"

    lines = stack_client.get(f"/jobs/{job_id}/logs").json()["data"]
    assert "preparing dataset" in lines[1]["message"]
    error = next(line for line in lines if line["level"] == "ERROR")
    assert error["message"].startswith(f"job {job_id} attempt 1 failed")
    assert "Traceback" in error["message"] and "TeacherLoadError" in error["message"]
    assert "teacher-that-was-moved" in error["message"]


def test_following_a_job_streams_its_lines_then_ends_with_its_status(stack_client, stack_dataset):
    accepted = stack_client.post("/train", json=train_body(stack_dataset["id"], max_steps=6))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    with stack_client.stream("GET", f"/jobs/{job_id}/logs", params={"follow": "true"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _events(stream)
    assert events[-1] == ("end", {"status": "succeeded"})
    lines = [data for event, data in events if event == "log"]
    assert "started" in lines[0]["message"]
    assert "recording it succeeded" in lines[-1]["message"]
    listed = stack_client.get(f"/jobs/{job_id}/logs").json()["data"]
    assert [line["id"] for line in lines] == [line["id"] for line in listed]

    # A reconnecting follower names the last line it saw and gets only the rest.
    headers = {"Last-Event-ID": str(lines[-2]["id"])}
    with stack_client.stream(
        "GET", f"/jobs/{job_id}/logs", params={"follow": "true"}, headers=headers
    ) as stream:
        again = _events(stream)
    assert again == [("log", lines[-1]), ("end", {"status": "succeeded"})]
    assert wait_for_job(stack_client, job_id)["status"] == "succeeded"


def test_a_training_job_on_two_processes_logs_what_each_rank_logged(stack_client, stack_dataset):
    body = train_body(stack_dataset["id"], max_steps=4, processes=2)
    accepted = stack_client.post("/train", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"], timeout=240)
    assert job["status"] == "succeeded", job

    lines = stack_client.get(f"/jobs/{job['id']}/logs").json()["data"]
    messages = [line["message"] for line in lines]
    started = next(i for i, m in enumerate(messages) if "training on dataset" in m)
    written = next(i for i, m in enumerate(messages) if m.startswith("checkpoint "))
    for rank in (0, 1):
        mine = [
            (i, line)
            for i, line in enumerate(lines)
            if line["message"].startswith(f"rank {rank}: ")
        ]
        assert mine, f"no line of rank {rank} in {messages}"
        first, last = mine[0][1]["message"], mine[-1][1]["message"]
        assert first.startswith(
            f"rank {rank}: training steps 1 to 4 in batches of 8 (4 of each in this process)"
        )
        assert last.startswith(f"rank {rank}: trained to step 4: final loss ")
        # Relayed while the job ran, by the worker that ran it, under the rank's logger.
        assert all(started < i < written for i, _ in mine)
        assert {line["worker"] for _, line in mine} == {job["worker"]}
        assert {line["logger"] for _, line in mine} == {"gistnet.train"}
