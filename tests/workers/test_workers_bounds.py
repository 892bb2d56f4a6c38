"""A source that expands past its bounds fails its job naming the bound, as it streams:
a real worker on the default bounds meets a long line, and the worker's tasks, run in
this process on a stack whose GISTNET_LIMITS lowers the file bound, meet a gzip bomb."""

from __future__ import annotations

import gzip

import pytest
import zstandard
from fastapi.testclient import TestClient

from api.main import create_app
from gistnet.bounds import SourceBounds
from service.queue import TASK_OF_KIND, JobKind
from tests.service_stack import REDIS_DB, STACK_KINDS, dataset_body, stack_of_kind, wait_for_job

pytestmark = [pytest.mark.services]


def _write_long_line_zst(path, line_bytes: int) -> None:
    with path.open("wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as out:
        out.write(b'{"text": "A short story."}\n{"text": "')
        for _ in range(line_bytes // (1 << 20)):
            out.write(b"a" * (1 << 20))
        out.write(b'"}\n')


def test_a_line_past_the_default_document_bound_fails_the_job_naming_it(
    stack, stack_client, stack_worker, teacher, documents
):
    longest = SourceBounds().max_document_bytes
    corpus = stack.settings.data_root / "bounds" / "long.jsonl.zst"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    _write_long_line_zst(corpus, longest + (1 << 20))
    assert corpus.stat().st_size < 100_000
    body = dataset_body(teacher, documents, name="long-line", teacher_states="none")
    body["splits"]["train"] = {"source": "bounds/long.jsonl.zst"}
    accepted = stack_client.post("/datasets", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "failed", job
    assert job["error"]["type"] == "BoundError"
    assert (
        f"long.jsonl.zst:2: a document longer than {longest} bytes (sources.max_document_bytes)"
        in job["error"]["message"]
    )
    assert "GISTNET_LIMITS" in job["error"]["message"]


@pytest.fixture(scope="module", params=STACK_KINDS)
def bounded(request, tmp_path_factory):
    """(client, stack, tasks) on a stack whose sources may expand to 64 KB at most."""
    from workers.celery_app import create_celery_app

    limits = {"sources.max_file_bytes": 65536}
    with stack_of_kind(
        request.param,
        tmp_path_factory.mktemp("bounded"),
        redis_db=REDIS_DB["workers"],
        limits=limits,
    ) as stack:
        app = create_celery_app(stack.settings)
        app.loader.import_default_modules()
        tasks = {kind: app.tasks[TASK_OF_KIND[kind]] for kind in JobKind}
        with TestClient(create_app(stack.settings)) as client:
            yield client, stack, tasks


@pytest.mark.parametrize("shards", [1, 2])
def test_a_source_expanding_past_the_settings_file_bound_fails_the_job_naming_it(
    bounded, teacher, documents, shards
):
    client, stack, tasks = bounded
    bomb = stack.settings.data_root / f"bomb-{shards}.jsonl.gz"
    bomb.write_bytes(gzip.compress(b'{"text": "spam spam spam"}\n' * 100_000))
    assert bomb.stat().st_size < 20_000  # 2.7 MB of text
    body = dataset_body(teacher, documents, name="bomb", teacher_states="none")
    body["splits"]["train"] = {"source": bomb.name, "shards": shards}
    accepted = client.post("/datasets", json=body).json()
    assert tasks[JobKind.PREPARE](accepted["job_id"]) == "failed"
    job = client.get(f"/jobs/{accepted['job_id']}").json()
    assert job["error"]["type"] == "BoundError"
    assert (
        f"{bomb.name}: its text is longer than 65536 bytes once decompressed "
        "(sources.max_file_bytes)" in job["error"]["message"]
    )
    dataset = client.get(f"/datasets/{accepted['dataset_id']}").json()
    assert dataset["status"] == "failed" and "sources.max_file_bytes" in dataset["error"]
