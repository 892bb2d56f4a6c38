"""The platform's main flow on PostgreSQL + Redis with a real Celery worker subprocess."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
import torch

from gistnet.config import validate_run_config
from gistnet.train_request import TrainSettings
from service.artifacts import resume_checkpoint
from service.db.engine import session_scope
from service.db.records import create_dataset, create_training_job
from service.queue import JobKind, celery_client, send_job
from tests.service_stack import dataset_body, train_body, wait_for_job, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_inline_dataset_job_succeeds_and_its_shards_exist(stack, stack_dataset):
    assert stack_dataset["status"] == "ready"
    assert stack_dataset["teacher_hidden_size"] == 128
    assert stack_dataset["fingerprint"]
    assert set(stack_dataset["splits"]) == {"train", "validation"}
    for split in stack_dataset["splits"].values():
        assert split["examples"] > 0
        assert stack.settings.artifact_path(split["path"]).is_file()
    assert (stack.settings.artifact_path(stack_dataset["path"]) / "metadata.yaml").is_file()


def test_training_job_records_a_model_and_its_loss_curve(
    stack_client, stack, stack_dataset, stack_model
):
    job, model = stack_model
    assert job["kind"] == "train" and job["attempt"] == 1
    assert job["progress"]["step"] == job["progress"]["max_steps"] == 12
    assert job["started_at"] <= job["finished_at"]
    assert model["dataset_id"] == stack_dataset["id"]
    assert model["model_config"]["hidden_size"] == 128
    assert model["training_config"]["max_steps"] == 12
    assert model["final_loss"] is not None and model["steps"] == 12
    assert stack.settings.artifact_path(model["checkpoint_path"]).is_file()

    curve = stack_client.get(f"/jobs/{job['id']}/metrics").json()
    assert [p["step"] for p in curve["data"]] == list(range(1, 13))
    assert curve["data"][-1]["loss"] == pytest.approx(model["final_loss"])
    assert curve["data"][-1]["val_loss"] is not None  # scored on the validation split at the end
    listed = stack_client.get("/models").json()
    assert model["id"] in [m["id"] for m in listed["data"]]


def test_gist_returns_the_vectors_the_checkpoint_gives_when_run_directly(
    stack_client, stack, stack_model
):
    from gistnet.inference import GistEncoder

    _, model = stack_model
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 1000, size=(5, 32)).tolist()
    answer = stack_client.post("/gist", json={"model_id": model["id"], "blocks": blocks})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_id"] == model["id"] and body["dim"] == 128

    direct = GistEncoder.from_checkpoint(
        stack.settings.artifact_path(model["checkpoint_path"]), device="cpu"
    ).encode(torch.tensor(blocks))
    np.testing.assert_allclose(np.array(body["gists"]), direct.numpy(), rtol=1e-5, atol=1e-5)

    # base64: little-endian float32 bytes of the same vectors.
    packed = stack_client.post(
        "/gist", json={"model_id": model["id"], "blocks": blocks, "encoding": "base64"}
    ).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(g), dtype="<f4") for g in packed["gists"]])
    np.testing.assert_allclose(decoded, direct.numpy(), rtol=1e-5, atol=1e-5)


def test_gist_of_text_uses_full_blocks_and_reports_the_tail(stack_client, stack_model, documents):
    from gistnet.teacher import load_tokenizer

    _, model = stack_model
    text = documents[0]
    ids = load_tokenizer(model["tokenizer"])(text, add_special_tokens=False)["input_ids"]
    body = stack_client.post("/gist", json={"text": text}).json()  # no model_id: the newest
    assert body["tokens"] == len(ids)
    assert len(body["gists"]) == len(ids) // 32
    assert body["unused_tokens"] == len(ids) % 32
    by_ids = stack_client.post(
        "/gist", json={"blocks": np.array(ids[: len(ids) // 32 * 32]).reshape(-1, 32).tolist()}
    ).json()
    np.testing.assert_allclose(body["gists"], by_ids["gists"], rtol=1e-6, atol=1e-6)


def test_concurrent_gist_requests_are_batched_and_each_gets_its_own_vectors(
    stack_client, stack_model
):
    from concurrent.futures import ThreadPoolExecutor

    _, model = stack_model
    stack_client.post("/gist", json={"model_id": model["id"], "blocks": [[1] * 32]})  # load it
    rng = np.random.default_rng(1)
    requests = [rng.integers(0, 1000, size=(2, 32)).tolist() for _ in range(16)]
    alone = [
        stack_client.post("/gist", json={"model_id": model["id"], "blocks": b}).json()["gists"]
        for b in requests
    ]
    before = stack_client.get("/health").json()["gist_forwards"]
    with ThreadPoolExecutor(16) as pool:
        together = list(
            pool.map(
                lambda b: stack_client.post("/gist", json={"model_id": model["id"], "blocks": b}),
                requests,
            )
        )
    forwards = stack_client.get("/health").json()["gist_forwards"] - before
    assert all(r.status_code == 200 for r in together)
    for mine, reference in zip(together, alone, strict=True):
        np.testing.assert_allclose(mine.json()["gists"], reference, rtol=1e-5, atol=1e-5)
    assert forwards < len(requests)  # several requests shared a forward


def test_evaluation_job_reports_delta_nll_and_the_model_shows_it(
    stack_client, stack, stack_dataset, stack_model
):
    _, model = stack_model
    accepted = stack_client.post(
        "/evaluations",
        json={
            "model_id": model["id"],
            "dataset_id": stack_dataset["id"],
            "split": "validation",
            "bootstrap_samples": 50,
        },
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["evaluation_id"] == accepted.json()["evaluation_id"]
    evaluation = stack_client.get(accepted.json()["evaluation_url"]).json()
    assert evaluation["status"] == "ready"
    report = evaluation["report"]
    assert {"full", "gist", "drop", "mean", "swapped"} <= set(report["conditions"])
    shown = stack_client.get(f"/models/{model['id']}").json()["latest_evaluation"]
    assert shown["id"] == evaluation["id"] and shown["report"] == report

    # The report and its plot are artifacts too, and the plot is served as a PNG.
    assert stack.settings.artifact_path(report["files"]["json"]).is_file()
    plot = stack_client.get(f"{accepted.json()['evaluation_url']}/plot")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")
    assert stack_client.get("/evaluations/999999/plot").status_code == 404


def test_job_whose_teacher_folder_is_missing_ends_failed_with_the_message(
    stack_client, stack, stack_worker, teacher, documents, tmp_path
):
    # The folder was there when the request was checked and is gone when the job runs
    # (a volume not mounted on the worker, say): the row is made as the API makes it.
    gone = str(tmp_path / "teacher-that-was-moved")
    body = dataset_body(gone, documents)
    with session_scope(stack.settings.database_url) as session:
        dataset, job = create_dataset(session, name="orphan", config=body)
        dataset_id, job_id = dataset.id, job.id
    send_job(celery_client(stack.settings), job_id=job_id, kind=JobKind.PREPARE)

    job = wait_for_job(stack_client, job_id)
    assert job["status"] == "failed"
    assert "teacher-that-was-moved" in job["error"]["message"]
    assert "does not exist" in job["error"]["message"]
    assert job["error"]["type"] == "TeacherLoadError"
    dataset = stack_client.get(f"/datasets/{dataset_id}").json()
    assert dataset["status"] == "failed" and dataset["error"] == job["error"]["message"]


def test_cancel_stops_a_running_training_job_within_a_few_steps(stack, stack_client, stack_dataset):
    accepted = stack_client.post("/train", json=train_body(stack_dataset["id"], max_steps=100_000))
    job_id = accepted.json()["job_id"]
    resume = stack.settings.artifact_path(resume_checkpoint(job_id))
    wait_until(resume.exists, timeout=60, interval=0.05, what="a resume checkpoint")
    asked = time.monotonic()
    answer = stack_client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 202 and answer.json()["cancel_requested"]
    job = wait_for_job(stack_client, job_id, timeout=30)
    assert job["status"] == "cancelled"
    assert "cancelled" in job["error"]["message"]
    assert time.monotonic() - asked < 10
    assert job["progress"]["step"] < 100_000
    assert stack_client.post(f"/jobs/{job_id}/cancel").status_code == 409  # nothing left to cancel
    # A cancelled job never resumes: its resume checkpoint is gone with it.
    assert not resume.exists()


def test_a_job_committed_but_never_sent_is_sent_by_the_sweep(stack, stack_client, stack_dataset):
    # The API committed the row and died before sending its message (or the broker lost it):
    # the database says queued, and the workers' sweep sends it again.
    with session_scope(stack.settings.database_url) as session:
        run = validate_run_config(
            {"training": {"batch_size": 8, "max_steps": 3, "eval_every": 1000}}
        )
        job_id = create_training_job(
            session,
            dataset_id=stack_dataset["id"],
            settings=TrainSettings(run=run, split="train").to_dict(),
        ).id
    job = wait_for_job(stack_client, job_id, timeout=60)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1 and job["sends"] >= 2
