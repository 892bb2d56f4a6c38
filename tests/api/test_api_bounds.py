"""Small inputs that ask for unbounded work are refused naming the bound: a checkpoint whose
model is too large to build, a source line or an upload that expands too far."""

from __future__ import annotations

import glob
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.service_stack import served, wait_until
from tests.small_disk import small_disk

pytestmark = [pytest.mark.services]


def _record_forged_model(settings, trained_model: dict, dataset_id: int, **model_config) -> int:
    """A copy of the trained model's checkpoint whose model_config says otherwise, written
    into the artifact store and recorded as a model, as a hostile writer would."""
    from service.db.engine import session_scope
    from service.db.models import Job
    from service.db.records import record_model
    from service.queue import JobKind, JobStatus, QueueName

    payload = torch.load(trained_model["checkpoint"], map_location="cpu", weights_only=True)
    payload["model_config"] = {**payload["model_config"], **model_config}
    with session_scope(settings.database_url) as session:
        job = Job(kind=JobKind.TRAIN, queue=QueueName.TRAIN, status=JobStatus.SUCCEEDED)
        session.add(job)
        session.flush()
        job_id = job.id
    key = f"jobs/{job_id}/gistnet.pt"
    settings.artifact_path(key).parent.mkdir(parents=True)
    torch.save(payload, settings.artifact_path(key))
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    config = payload["model_config"]
    info |= {"block_size": config["block_size"], "hidden_size": config["hidden_size"]}
    with session_scope(settings.database_url) as session:
        model = record_model(
            session,
            job_id=job_id,
            dataset_id=dataset_id,
            split="train",
            checkpoint_path=key,
            info=info,
            steps=3,
            final_loss=None,
            val_loss=None,
        )
        return model.id


@pytest.mark.parametrize(
    ("shape", "named"),
    [
        ({"num_layers": 100_000}, "model_config.num_layers is 100000"),
        ({"hidden_size": 1_000_000}, "GISTNET_WORKER_MEMORY_BYTES"),
    ],
)
def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_it_is_built(
    client, api_stack, ready_dataset, trained_model, shape, named
):
    model_id = _record_forged_model(api_stack.settings, trained_model, ready_dataset["id"], **shape)
    try:
        block = [1] * trained_model_block_size(trained_model)
        answer = client.post("/gist", json={"model_id": model_id, "blocks": [block]})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert named in detail and f"model {model_id} cannot be served" in detail
        # The model that fits is served as before.
        fine = client.post("/gist", json={"model_id": trained_model["id"], "blocks": [block]})
        assert fine.status_code == 200, fine.text
    finally:
        _forget_model(api_stack.settings, model_id)


def _forget_model(settings, model_id: int) -> None:
    """The forged model, its job and its checkpoint removed: it would otherwise stay the
    newest, the one a later /gist without model_id of the session's stack is given."""
    import shutil

    from service.db.engine import session_scope
    from service.db.models import Job, Model

    with session_scope(settings.database_url) as session:
        model = session.get(Model, model_id)
        job_id = model.job_id
        session.delete(model)
        session.delete(session.get(Job, job_id))
    shutil.rmtree(settings.artifact_path(f"jobs/{job_id}"))


def trained_model_block_size(trained_model: dict) -> int:
    from gistnet.checkpoint import read_checkpoint_info

    return int(read_checkpoint_info(trained_model["checkpoint"])["block_size"])


# --------------------------------------------------------------------------- uploads


def _app(api_stack, **overrides):
    from api.main import create_app
    from service.settings import load_settings

    return create_app(
        load_settings(**{**api_stack.settings.model_dump(exclude={"api_key"}), **overrides})
    )


def _config(teacher: str, **extra) -> str:
    return json.dumps(
        {"dataset_name": "uploaded", "tokenizer": teacher, "teacher_model": teacher, **extra}
    )


def _left_in(data_root: Path) -> set[Path]:
    folder = data_root.resolve() / "uploads"
    return set(folder.iterdir()) if folder.is_dir() else set()


def test_a_file_name_past_255_bytes_is_422_and_a_long_one_is_kept_shorter(
    client, api_stack, teacher
):
    before = _left_in(api_stack.settings.data_root)
    too_long = "é" * 130 + ".txt"  # 264 bytes of UTF-8
    answer = client.post(
        "/datasets",
        data={"config": _config(teacher)},
        files=[("train", (too_long, b"Once upon a time. " * 40))],
    )
    assert answer.status_code == 422, answer.text
    assert (
        answer.json()["detail"].startswith("train: the file name")
        and "255" in answer.json()["detail"]
    )
    assert _left_in(api_stack.settings.data_root) == before
    long = "s" * 245 + ".jsonl"  # within 255 bytes, past what a counter beside it leaves
    answer = client.post(
        "/datasets",
        data={"config": _config(teacher)},
        files=[("train", (long, b'{"text": "Once upon a time."}\n' * 40))],
    )
    assert answer.status_code == 202, answer.text
    (folder,) = _left_in(api_stack.settings.data_root) - before
    (stored,) = (folder / "train").iterdir()
    assert stored.name.endswith("sss.jsonl") and len(stored.name) <= 255


@pytest.mark.parametrize(
    "config",
    [
        "[" * 100_000 + "]" * 100_000,
        "{" * 100_000,
        "splits: &loop {train: *loop}",
        # Seven levels of ten copies each: ten million values out of 300 bytes.
        "\n".join(
            f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'x'] * 10)}]"
            for prev, name in zip(["", *"abcdef"], "abcdefg", strict=True)
        ),
    ],
    ids=["brackets", "braces", "alias-loop", "alias-fan-out"],
)
def test_a_config_nested_without_end_is_422_naming_config(client, api_stack, config):
    before = _left_in(api_stack.settings.data_root)
    answer = client.post(
        "/datasets", data={"config": config}, files=[("train", ("a.txt", b"Once upon a time."))]
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("config: ")
    assert _left_in(api_stack.settings.data_root) == before


def test_a_full_data_root_is_507_and_keeps_no_partial_file(api_stack, teacher, tmp_path):
    with small_disk(tmp_path / "data", size="512k") as data_root:
        with TestClient(_app(api_stack, data_root=data_root)) as client:
            answer = client.post(
                "/datasets",
                data={"config": _config(teacher)},
                files=[("train", ("big.txt", b"Once upon a time. " * 60_000))],  # ~1 MiB
            )
        assert answer.status_code == 507, answer.text
        assert "data root is full" in answer.json()["detail"]
        assert _left_in(data_root) == set()


def test_an_upload_still_arriving_is_hidden_from_globs_and_swept_once_orphaned(
    api_stack, teacher, tmp_path
):
    data_root = tmp_path / "data"
    app = _app(api_stack, data_root=data_root)
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="config"\r\n\r\n'
        f"{_config(teacher)}\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="train"; filename="a.txt"\r\n\r\n'
    ).encode() + b"Once upon a time. " * 1000
    with served(app) as (host, port), socket.create_connection((host, port)) as sock:
        sock.sendall(
            b"POST /datasets HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + head
        )
        wait_until(
            lambda: any((data_root / "uploads").glob(".incoming-*/train/0001-a.txt")),
            what="the upload's first bytes on disk",
        )
        # What a `source` glob over the uploads sees of it: nothing.
        assert glob.glob(str(data_root / "uploads" / "*" / "train" / "*")) == []
        assert glob.glob(str(data_root / "uploads" / "**"), recursive=True) == [
            str(data_root / "uploads") + "/"
        ]
    # An API killed mid-upload leaves such a folder behind; the next one sweeps it once it
    # has been still for an hour, and leaves a fresh one (another API's upload) alone.
    stale, fresh = (
        data_root / "uploads" / ".incoming-stale",
        data_root / "uploads" / ".incoming-fresh",
    )
    for folder in (stale, fresh):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "0001-a.txt").write_text("Once upon")
    hour_ago = time.time() - 3700
    for path in (stale, stale / "train", stale / "train" / "0001-a.txt"):
        os.utime(path, (hour_ago, hour_ago))
    with TestClient(app):
        assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize(
    "route", ["/train", "/datasets", "/evaluations", "/gist", "/datasets/import"]
)
def test_a_json_body_nested_without_end_is_422_naming_the_nesting(client, route):
    for body in ["[" * 10_000 + "]" * 10_000, '{"a":' * 5_000 + "1" + "}" * 5_000]:
        answer = client.post(route, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, (route, body[:8], answer.text)
        assert answer.json()["detail"].startswith("body: JSON nested more than"), answer.text
    # Past a route's body size it is a 413 first; where the body may be that large, a 422.
    answer = client.post(
        route, content="[" * 100_000 + "]" * 100_000, headers={"content-type": "application/json"}
    )
    assert answer.status_code in (413, 422), answer.text
    assert answer.status_code == 413 or answer.json()["detail"].startswith("body: JSON nested")


def test_a_json_body_nested_without_end_on_openais_route_is_its_400_naming_the_nesting(client):
    body = "[" * 10_000 + "]" * 10_000
    answer = client.post(
        "/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("body: JSON nested more than")


def test_a_source_whose_size_shows_it_past_a_bound_is_422_before_a_job(api_stack, teacher):
    corpus = api_stack.settings.data_root / "sized"
    corpus.mkdir(exist_ok=True)
    (corpus / "long.txt").write_text("Once upon a time. " * 100)  # 1,800 bytes: one document
    (corpus / "many.jsonl").write_text('{"text": "Once upon a time."}\n' * 200)  # 6,200 bytes
    limits = {"sources.max_document_bytes": 1024, "sources.max_file_bytes": 4096}
    with TestClient(_app(api_stack, limits=limits)) as client:
        for source, named in [
            ("sized/long.txt", "long.txt: a document longer than 1024 bytes"),
            (
                "sized/many.jsonl",
                "many.jsonl: its text is longer than 4096 bytes once decompressed",
            ),
        ]:
            body = json.loads(_config(teacher, splits={"train": {"source": source}}))
            answer = client.post("/datasets", json=body)
            assert answer.status_code == 422, answer.text
            detail = answer.json()["detail"]
            assert detail.startswith("splits.train.source: ") and named in detail
            assert "GISTNET_LIMITS" in detail
