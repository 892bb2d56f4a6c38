"""POST /datasets with files (multipart/form-data): stored under the data root and read as
the splits' `source`, refused with a message (and nothing left behind) when wrong."""

from __future__ import annotations

import gzip
import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from service.settings import load_settings


def _config(teacher: str, **extra) -> str:
    return json.dumps(
        {"dataset_name": "uploaded", "tokenizer": teacher, "teacher_model": teacher, **extra}
    )


def _uploads(api_stack) -> set:
    folder = api_stack.settings.data_root.resolve() / "uploads"
    return set(folder.iterdir()) if folder.is_dir() else set()


def test_uploaded_files_become_the_splits_sources(client, api_stack, teacher):
    before = _uploads(api_stack)
    answer = client.post(
        "/datasets",
        data={"config": _config(teacher)},
        files=[
            ("train", ("a story.txt", b"Once upon a time. " * 40, "text/plain")),
            ("train", ("more.jsonl", b'{"text": "The end."}\n', "application/jsonl")),
            ("validation", ("held/out.txt", b"Another story. " * 40, "text/plain")),
        ],
    )
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/datasets/{answer.json()['dataset_id']}"
    (folder,) = _uploads(api_stack) - before
    assert sorted(p.name for p in (folder / "train").iterdir()) == [
        "0001-a_story.txt",
        "0002-more.jsonl",
    ]
    assert (folder / "validation" / "0003-out.txt").read_bytes() == b"Another story. " * 40
    dataset = client.get(answer.json()["dataset_url"]).json()
    relative = folder.relative_to(api_stack.settings.data_root.resolve()).as_posix()
    assert dataset["sources"] == {
        "train": f"{relative}/train/*",
        "validation": f"{relative}/validation/*",
    }


@pytest.mark.parametrize(
    ("config", "files", "status", "message"),
    [
        (None, [("train", ("a.txt", b"x" * 10))], 422, "missing field 'config'"),
        ("valid", [("train", ("a.csv", b"x"))], 422, "cannot read 'a.csv'"),
        ("valid", [("tr ain", ("a.txt", b"x"))], 422, "names its split"),
        # The one split-name rule, as for a JSON body, a YAML config and an import.
        ("valid", [("../../tmp/x/owned", ("a.txt", b"x"))], 422, "names its split"),
        ("valid", [("/tmp/x", ("a.txt", b"x"))], 422, "names its split"),
        ("valid", [("a/b", ("a.txt", b"x"))], 422, "names its split"),
        ("valid", [("x" * 65, ("a.txt", b"x"))], 422, "names its split"),
        (
            "path-in-config",
            [("train", ("a.txt", b"x"))],
            422,
            "split name '../20/train' is not allowed",
        ),
        ("valid", [("train", ("a.txt", b""))], 422, "every uploaded file is empty"),
        (
            '{"dataset_name": "x"}',
            [("train", ("a.txt", b"x"))],
            422,
            "missing required key 'tokenizer'",
        ),
        ("[1, 2]", [("train", ("a.txt", b"x"))], 422, "must be an object"),
        ("valid", [("train", ("big.txt", b"x" * 5000))], 413, "GISTNET_UPLOAD_MAX_BYTES"),
    ],
)
def test_a_wrong_upload_is_refused_and_leaves_nothing(
    api_stack, teacher, config, files, status, message
):
    settings = load_settings(
        **{**api_stack.settings.model_dump(exclude={"api_key"}), "upload_max_bytes": 4096}
    )
    before = _uploads(api_stack)
    if config == "path-in-config":
        config = _config(teacher, splits={"../20/train": {"documents": ["x " * 80]}})
    data = {} if config is None else {"config": _config(teacher) if config == "valid" else config}
    with TestClient(create_app(settings)) as client:
        answer = client.post("/datasets", data=data, files=files)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert _uploads(api_stack) == before


def test_a_split_given_files_and_a_source_is_refused(client, teacher):
    config = _config(teacher, splits={"train": {"source": "corpus/*.txt"}})
    answer = client.post("/datasets", data={"config": config}, files=[("train", ("a.txt", b"x"))])
    assert answer.status_code == 422
    assert "splits.train" in answer.json()["detail"]


def test_an_upload_wants_the_api_key_before_a_byte_is_stored(api_stack, teacher):
    settings = load_settings(
        **{**api_stack.settings.model_dump(exclude={"api_key"}), "api_key": "s3cret"}
    )
    before = _uploads(api_stack)
    with TestClient(create_app(settings)) as client:
        upload = {"data": {"config": _config(teacher)}, "files": [("train", ("a.txt", b"x" * 99))]}
        assert client.post("/datasets", **upload).status_code == 401
        wrong = client.post("/datasets", headers={"Authorization": "Bearer nope"}, **upload)
        assert wrong.status_code == 401
        right = client.post("/datasets", headers={"Authorization": "Bearer s3cret"}, **upload)
        assert right.status_code == 202, right.text
    assert len(_uploads(api_stack) - before) == 1


def test_a_source_preparation_cannot_read_is_refused_up_front(client, api_stack, teacher):
    corpus = api_stack.settings.data_root / "tables"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "stories.csv").write_text("text\nhello\n")
    body = json.loads(_config(teacher, splits={"train": {"source": "tables/*"}}))
    answer = client.post("/datasets", json=body)
    assert answer.status_code == 422
    assert "stories.csv" in answer.json()["detail"] and ".jsonl" in answer.json()["detail"]


def _long_line_zst(line_bytes: int) -> bytes:
    import io

    import zstandard

    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:
        writer.write(b'{"text": "short"}\n{"text": "')
        for _ in range(line_bytes // 65536):
            writer.write(b"a" * 65536)
        writer.write(b'"}\n')
    return out.getvalue()


def _bounded_app(api_stack, **limits):
    settings = load_settings(
        **{**api_stack.settings.model_dump(exclude={"api_key"}), "limits": limits}
    )
    return create_app(settings)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # A few KB holding one 8 MiB line: past the document bound.
        (
            "long.jsonl.zst",
            _long_line_zst(8 << 20),
            "train: 0001-long.jsonl.zst:2: a document longer than 1048576 bytes "
            "(sources.max_document_bytes)",
        ),
        # 10 KB of gzip holding 10 MB of text: past what an upload may expand to.
        (
            "bomb.jsonl.gz",
            gzip.compress(b'{"text": "spam spam spam"}\n' * 400_000),
            "the uploaded files hold more than 4194304 bytes of text once decompressed "
            "(uploads.max_text_bytes)",
        ),
    ],
    ids=["long-line", "expansion"],
)
def test_an_upload_that_expands_past_its_bounds_is_413_naming_the_bound(
    api_stack, teacher, name, content, message
):
    assert len(content) < 64 * 1024
    before = _uploads(api_stack)
    app = _bounded_app(
        api_stack,
        **{"sources.max_document_bytes": 1 << 20, "uploads.max_text_bytes": 4 << 20},
    )
    with TestClient(app) as client:
        answer = client.post(
            "/datasets", data={"config": _config(teacher)}, files=[("train", (name, content))]
        )
    assert answer.status_code == 413, answer.text
    detail = answer.json()["detail"]
    assert message in detail and "GISTNET_LIMITS" in detail
    assert _uploads(api_stack) == before


def test_each_upload_sweeps_the_incoming_folders_left_an_hour_ago(client, api_stack, teacher):
    import os
    import time

    stale = api_stack.settings.data_root.resolve() / "uploads" / ".incoming-left-behind"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "0001-a.txt").write_text("Once upon")
    hour_ago = time.time() - 3700
    for path in (stale, stale / "train", stale / "train" / "0001-a.txt"):
        os.utime(path, (hour_ago, hour_ago))
    answer = client.post(
        "/datasets",
        data={"config": _config(teacher)},
        files=[("train", ("a.txt", b"Once upon a time. " * 40))],
    )
    assert answer.status_code == 202, answer.text
    assert not stale.exists()
