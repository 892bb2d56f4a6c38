"""The whole flow with every artifact in an object store: moto's S3 server on 127.0.0.1,
GISTNET_ARTIFACT_ROOT and GISTNET_DATA_ROOT under s3:// URLs, a real Celery worker that
shares no folder with the API (each reads through its own cache). Also: a training job over
two processes whose second process is SIGKILLed resumes and succeeds, and a missing bucket
or refused credentials are named at start-up, not by a failed job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from gistnet.storage import UPLOADING
from tests.gistnet.test_distributed import rank_pids
from tests.s3_server import s3_server
from tests.service_stack import (
    REPO,
    dataset_body,
    make_stack,
    start_worker,
    subprocess_env,
    train_body,
    wait_for_job,
    wait_until,
)

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_stack(s3, tmp_path_factory):
    """SQLite records and broker, artifacts and sources in a bucket; the worker's cache and
    the API's cache are different folders, as on two machines."""
    root = tmp_path_factory.mktemp("s3-stack")
    bucket = s3.new_bucket()
    stack = make_stack(
        root,
        database_url=f"sqlite:///{root}/records.sqlite",
        broker_url=f"sqla+sqlite:///{root}/broker.sqlite",
        artifact_root=f"s3://{bucket}/platform",
        data_root=f"s3://{bucket}/corpora",
        storage_options=s3.storage_options,
        cache_dir=root / "api-cache",
    )
    stack.env["GISTNET_CACHE_DIR"] = str(root / "worker-cache")
    stack.bucket = bucket
    return stack


@pytest.fixture(scope="module")
def s3_worker(s3_stack):
    worker = start_worker(s3_stack, name="s3-worker")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def s3_client(s3_stack):
    with TestClient(create_app(s3_stack.settings)) as client:
        yield client


def test_flow_prepares_trains_evaluates_and_serves_gists_from_the_bucket(
    s3, s3_stack, s3_worker, s3_client, teacher, documents
):
    store = s3_stack.settings.artifact_store()
    corpora = s3_stack.settings.data_store()
    corpus = s3_stack.root / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[:-2]))
    corpora.publish(corpus, "stories/train.jsonl")

    # Sources under the bucket's data prefix, with the same escape checks as a folder;
    # another bucket, or the artifact prefix of the same bucket, is outside it.
    body = dataset_body(teacher, documents)
    outside = (
        "../platform/x.jsonl",
        "s3://elsewhere/x.jsonl",
        f"{store.root}/x.jsonl",
        f"{corpora.root}/../platform/x.jsonl",
        "/etc/passwd",
    )
    for bad in outside:
        body["splits"]["train"] = {"source": bad}
        assert s3_client.post("/datasets", json=body).status_code == 422, bad
    # As a URL that starts with the data root (a relative glob names the same objects).
    body["splits"]["train"] = {"source": f"{corpora.root}/stories/*.jsonl"}
    accepted = s3_client.post("/datasets", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    dataset = s3_client.get(f"/datasets/{accepted.json()['dataset_id']}").json()
    assert dataset["splits"]["train"]["documents"] == len(documents) - 2
    for name in ("train.arrow", "validation.arrow", "metadata.yaml"):
        assert store.exists(f"{dataset['path']}/{name}"), name

    accepted = s3_client.post("/train", json=train_body(dataset["id"], max_steps=12))
    job = wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    model = s3_client.get(f"/models/{job['result']['model_id']}").json()
    assert store.exists(model["checkpoint_path"])
    assert not store.exists(f"jobs/{job['id']}/resume.pt")  # removed once recorded
    # Beside the checkpoint in the bucket, the same model as a Hugging Face style folder.
    folder_key, folder = f"jobs/{job['id']}/gistnet", s3_stack.root / "model-folder"
    for name in ("config.json", "model.safetensors", "run.yaml", "README.md"):
        assert store.download(f"{folder_key}/{name}", folder / name), name

    accepted = s3_client.post(
        "/evaluations",
        json={"model_id": model["id"], "dataset_id": dataset["id"], "bootstrap_samples": 20},
    )
    job = wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    report = s3_client.get(accepted.json()["evaluation_url"]).json()["report"]
    assert store.exists(report["files"]["json"]) and store.exists(report["files"]["plot"])

    blocks = np.random.default_rng(0).integers(0, 1000, size=(3, 32)).tolist()
    answer = s3_client.post("/gist", json={"model_id": model["id"], "blocks": blocks})
    assert answer.status_code == 200, answer.text
    from gistnet.inference import GistEncoder

    checkpoint = store.open_local(model["checkpoint_path"])
    assert checkpoint.is_relative_to(s3_stack.settings.cache_dir.resolve())
    direct = GistEncoder.from_checkpoint(checkpoint, device="cpu").encode(torch.tensor(blocks))
    np.testing.assert_allclose(answer.json()["gists"], direct.numpy(), rtol=1e-5, atol=1e-5)
    from_folder = GistEncoder.from_checkpoint(folder, device="cpu").encode(torch.tensor(blocks))
    assert torch.equal(from_folder, direct)

    # Nothing went to a local artifact folder, and no temporary upload was left behind.
    assert not (s3_stack.root / "artifacts").exists()
    assert not [p for p in s3.filesystem().find(s3_stack.bucket) if UPLOADING in p]
    assert s3_client.get("/ready").json()["checks"]["artifacts"] == "ok"

    # A deleted model takes its checkpoint and its folder out of the bucket.
    assert s3_client.delete(f"/models/{model['id']}").status_code == 204
    assert not store.exists(model["checkpoint_path"])
    assert not store.glob(f"{folder_key}/*")


def test_a_compressed_corpus_in_the_bucket_is_prepared_in_parts_and_trained_on(
    s3, s3_stack, s3_worker, s3_client, teacher, documents
):
    import zstandard

    corpora, store = s3_stack.settings.data_store(), s3_stack.settings.artifact_store()
    for i, part in enumerate((documents[:5], documents[5:10])):
        local = s3_stack.root / f"web-{i}.jsonl.zst"
        text = "".join(json.dumps({"text": d}) + "\n" for d in part).encode()
        local.write_bytes(zstandard.ZstdCompressor().compress(text))
        corpora.publish(local, f"web/web-{i}.jsonl.zst")
    body = dataset_body(teacher, documents, name="web", teacher_states="none")
    body["splits"]["train"] = {"source": "web/*.jsonl.zst", "shards": 3}
    accepted = s3_client.post("/datasets", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    assert job["parts"]["by_status"] == {"succeeded": 4}
    dataset = s3_client.get(f"/datasets/{accepted.json()['dataset_id']}").json()
    assert dataset["splits"]["train"]["documents"] == 10
    shards = [f"train-0000{i}-of-00003.arrow" for i in range(3)]
    for name in (*shards, *(f".parts/{s}.json" for s in shards), "metadata.yaml"):
        assert store.exists(f"{dataset['path']}/{name}"), name

    trained = s3_client.post("/train", json=train_body(dataset["id"], max_steps=3))
    job = wait_for_job(s3_client, trained.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    assert not [p for p in s3.filesystem().find(s3_stack.bucket) if UPLOADING in p]


def test_a_dataset_of_several_shards_in_the_bucket_imports(
    s3_stack, s3_worker, s3_client, teacher, documents
):
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    local = s3_stack.root / "to-import"
    body = dataset_body(teacher, documents, name="ours", teacher_states="none")
    body["splits"]["train"]["shards"] = 2
    prepare_dataset(validate_dataset_config(body), output_dir=local)
    corpora = s3_stack.settings.data_store()
    for file in (f for f in local.iterdir() if f.is_file()):  # shards, metadata.yaml
        corpora.publish(file, f"imports/ours/{file.name}")
    accepted = s3_client.post(
        "/datasets/import", json={"dataset_name": "ours", "path": "imports/ours"}
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    train = s3_client.get(accepted.json()["dataset_url"]).json()["splits"]["train"]
    assert len(train["shards"]) == 2
    assert train["examples"] == sum(s["examples"] for s in train["shards"]) > 0


def test_two_process_training_job_whose_rank_is_killed_resumes_and_succeeds(
    s3_stack, s3_worker, s3_client, teacher, documents
):
    accepted = s3_client.post("/datasets", json=dataset_body(teacher, documents, name="ddp"))
    assert wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)["status"] == "succeeded"
    steps = 40
    job_id = s3_client.post(
        "/train",
        json=train_body(accepted.json()["dataset_id"], max_steps=steps, processes=2),
    ).json()["job_id"]
    store = s3_stack.settings.artifact_store()
    # Kill the second process once the first resume checkpoint is in the bucket.
    wait_until(
        lambda: store.exists(f"jobs/{job_id}/resume.pt"), timeout=180, what="a resume checkpoint"
    )
    victims = wait_until(lambda: rank_pids(1), timeout=30, what="rank 1")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    job = wait_for_job(s3_client, job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    curve = s3_client.get(f"/jobs/{job_id}/metrics").json()["data"]
    assert [p["step"] for p in curve] == list(range(1, steps + 1))
    resumed_at = min(p["step"] for p in curve if p["attempt"] == 2)
    assert resumed_at > 1 and (resumed_at - 1) % 5 == 0  # from a checkpoint, not from step 1
    model = s3_client.get(f"/models/{job['result']['model_id']}").json()
    assert model["training_config"]["processes"] == 2


def test_missing_bucket_is_named_by_ready_and_stops_a_worker_at_start(s3, tmp_path):
    stack = make_stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path}/records.sqlite",
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.sqlite",
        artifact_root="s3://no-such-bucket/platform",
        storage_options=s3.storage_options,
        cache_dir=tmp_path / "cache",
    )
    with TestClient(create_app(stack.settings)) as client:
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert "bucket 'no-such-bucket'" in ready.json()["checks"]["artifacts"]
    assert ready.json()["checks"]["database"] == "ok"

    worker = subprocess.run(
        [sys.executable, "-m", "tools.cli", "worker"],
        env=subprocess_env(stack.env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode != 0
    assert "bucket 'no-such-bucket'" in worker.stderr


def test_refused_credentials_are_named_by_ready(tmp_path):
    with s3_server(authenticate=True) as server:
        stack = make_stack(
            tmp_path,
            database_url=f"sqlite:///{tmp_path}/records.sqlite",
            broker_url=f"sqla+sqlite:///{tmp_path}/broker.sqlite",
            artifact_root="s3://any-bucket/platform",
            storage_options={**server.storage_options, "key": "wrong", "secret": "wrong"},
            cache_dir=tmp_path / "cache",
        )
        started = time.monotonic()
        with TestClient(create_app(stack.settings)) as client:
            ready = client.get("/ready")
        assert ready.status_code == 503
        assert "refused the credentials" in ready.json()["checks"]["artifacts"]
        assert time.monotonic() - started < 30


def test_uploaded_files_go_to_the_bucket_and_prepare_from_there(
    s3_stack, s3_worker, s3_client, teacher, documents
):
    config = dataset_body(teacher, documents, name="uploaded")
    del config["splits"]["train"]
    files = [
        ("train", (f"story-{i}.txt", text.encode(), "text/plain"))
        for i, text in enumerate(documents[:4])
    ]
    accepted = s3_client.post("/datasets", data={"config": json.dumps(config)}, files=files)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(s3_client, accepted.json()["job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    dataset = s3_client.get(f"/datasets/{accepted.json()['dataset_id']}").json()
    assert dataset["splits"]["train"]["documents"] == 4
    uploaded = s3_stack.settings.data_store().glob("uploads/**/*.txt")
    assert len(uploaded) == 4
    # Nothing stays in the API's local staging folder.
    staging = s3_stack.settings.cache_dir / "upload-staging"
    assert not [p for p in staging.rglob("*") if p.is_file()]
