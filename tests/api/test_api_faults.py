"""The API behind a real uvicorn server, as an operator runs it, when things go wrong: the
database restarts under load, requests carry values the database cannot store or bodies far
too large, and an unforeseen error happens. Every answer is JSON, a briefly absent database
is 503 with Retry-After (never 500), and no answer breaks the client's keep-alive connection.

The database here is a PostgreSQL cluster of the test's own on a free port (the shared one
must not be restarted); the broker is the embedded SQLite one, since nothing is sent.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from typing import Any

import pytest

from api.main import create_app
from tests.private_servers import private_postgres
from tests.service_stack import (
    make_stack,
    record_ready_dataset,
    record_trained_model,
    served,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]


class KeptConnection:
    """One keep-alive HTTP connection. http.client quietly opens a new connection when the
    server closes the old one, so every answer is checked to have left this one open."""

    def __init__(self, host: str, port: int):
        self.http = http.client.HTTPConnection(host, port, timeout=60)
        self.http.connect()
        self.socket = self.http.sock

    def ask(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, dict[str, str], Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body)
        self.http.request(method, path, body=data, headers={"Content-Type": "application/json"})
        answer = self.http.getresponse()
        payload = answer.read()
        headers = {k.lower(): v for k, v in answer.getheaders()}
        assert headers["content-type"] == "application/json", (path, answer.status, payload)
        assert not answer.will_close and self.http.sock is self.socket, (
            f"{method} {path} ({answer.status}) closed the connection"
        )
        return answer.status, headers, json.loads(payload)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory, teacher):
    """A private PostgreSQL cluster with a prepared dataset and a trained model on it."""
    with private_postgres() as postgres:
        root = tmp_path_factory.mktemp("faults-pg")
        stack = make_stack(
            root, database_url=postgres.url, broker_url=f"sqla+sqlite:///{root}/broker.sqlite"
        )
        dataset = record_ready_dataset(stack.settings, teacher)
        model = record_trained_model(stack.settings, dataset)
        yield postgres, stack, dataset, model
        from service.db.engine import dispose_engines

        dispose_engines()


def test_a_database_restart_answers_503_with_retry_after_and_gist_goes_on(postgres_stack):
    postgres, stack, dataset, model = postgres_stack
    blocks = [[7] * 32, [8] * 32]
    with served(create_app(stack.settings)) as (host, port):
        client = KeptConnection(host, port)
        # Load the model, and learn which one is the newest.
        assert client.ask("POST", "/gist", {"model_id": model["id"], "blocks": blocks})[0] == 200
        assert client.ask("POST", "/gist", {"blocks": blocks})[0] == 200

        postgres.stop()
        answers: dict[str, list[tuple[int, dict, Any]]] = {}
        down_until = time.monotonic() + 2.0
        while time.monotonic() < down_until:
            for name, method, path, body in (
                ("jobs", "GET", "/jobs", None),
                ("train", "POST", "/train", {"dataset_id": dataset["id"]}),
                ("gist of a model", "POST", "/gist", {"model_id": model["id"], "blocks": blocks}),
                ("gist of the newest", "POST", "/gist", {"blocks": blocks}),
            ):
                answers.setdefault(name, []).append(client.ask(method, path, body))
        postgres.start()
        # Connections are checked before use: the first request after the restart works.
        back = client.ask("GET", "/jobs")
        client.close()

    for name in ("jobs", "train"):
        assert {status for status, _, _ in answers[name]} == {503}, name
        _, headers, body = answers[name][0]
        assert headers["retry-after"] == "3"
        assert body["detail"].startswith("the database is unavailable")
    # A loaded model needs no database: gists go on through the restart.
    for name in ("gist of a model", "gist of the newest"):
        assert {status for status, _, _ in answers[name]} == {200}, name
    assert back[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/datasets", "name_too_long", "dataset_name"),
        ("POST", "/datasets", "nul_in_a_document", "splits.train.documents[1]"),
        ("POST", "/train", {"training": {"lr": "Infinity"}}, "training.lr"),
        ("POST", "/train", {"training": {"weight_decay": "1e999"}}, "training.weight_decay"),
        ("POST", "/train", {"model": {"rope_base": "Infinity"}}, "model.rope_base"),
        ("POST", "/train", {"model": {"norm_eps": "1e999"}}, "model.norm_eps"),
        ("GET", "/jobs/99999999999999999999999", None, "job_id"),
        ("POST", "/gist", {"model_id": 2**70, "blocks": [[1] * 32]}, "model_id"),
        ("POST", "/train", {"dataset_id": 2**70}, "dataset_id"),
    ],
)
def test_a_value_postgresql_cannot_store_is_422_naming_it_on_a_kept_connection(
    postgres_stack, teacher, method, path, body, field
):
    _, stack, dataset, _ = postgres_stack
    raw = None
    if body == "name_too_long":
        body = _dataset_body(teacher, dataset_name="n" * 201)
    elif body == "nul_in_a_document":
        body = _dataset_body(teacher, documents=["a story " * 40, "a\x00b " * 40])
    elif isinstance(body, dict) and path == "/train":
        # JSON's non-standard Infinity and an overflowing 1e999, as a client may send them.
        text = json.dumps({"dataset_id": dataset["id"], **body})
        raw = text.replace('"Infinity"', "Infinity").replace('"1e999"', "1e999").encode()
    with served(create_app(stack.settings)) as (host, port):
        client = KeptConnection(host, port)
        status, _, answer = client.ask(method, path, body, raw=raw)
        assert status == 422, answer
        assert answer["detail"].startswith(field) or f"{field}:" in answer["detail"], answer
        # The same connection goes on serving.
        assert client.ask("GET", f"/datasets/{dataset['id']}")[0] == 200
        client.close()


def _dataset_body(teacher: str, **extra) -> dict:
    return {
        "dataset_name": "faults",
        "tokenizer": teacher,
        "teacher_model": teacher,
        "splits": {"train": {"documents": extra.pop("documents", ["a story " * 40])}},
        **extra,
    }


# --------------------------------------------------------------------------- no database


@pytest.fixture
def embedded_app(tmp_path):
    stack = make_stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path}/records.sqlite",
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.sqlite",
    )
    return create_app(stack.settings)


def test_an_unforeseen_error_is_a_json_500_and_keeps_the_connection(embedded_app):
    def broken() -> dict:
        raise RuntimeError("a bug nobody foresaw")

    embedded_app.add_api_route("/broken", broken)
    with served(embedded_app) as (host, port):
        client = KeptConnection(host, port)
        status, _, body = client.ask("GET", "/broken")
        assert status == 500
        assert body == {"detail": "internal error (RuntimeError); it has been logged", "errors": []}
        assert client.ask("GET", "/jobs")[0] == 200
        client.close()


def _send_until_answered(
    host: str, port: int, head: bytes, pieces, *, chunked: bool, first_wait_s: float = 0.01
):
    """Send a request head, then body pieces until the server answers (or stops reading).
    Returns (the answer's status line and body, bytes of body sent)."""
    sent = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        for index, piece in enumerate(pieces):
            # A short look for the answer between pieces, a long one before the first.
            readable, _, _ = select.select([sock], [], [], first_wait_s if index == 0 else 0.01)
            if readable:
                break  # the answer has come
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:  # the server answered and closed: it will not read the rest
                break
            sent += len(piece)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    status, _, rest = answer.partition(b"\r\n")
    return status.decode(), json.loads(rest.partition(b"\r\n\r\n")[2]), sent


@pytest.mark.parametrize(("path", "setting"), [("/gist", "GIST"), ("/datasets", "DATASET")])
def test_a_50_mb_body_is_refused_before_it_is_read(embedded_app, path, setting):
    limit = getattr(embedded_app.state.settings, f"{setting.lower()}_max_body_bytes")
    fifty_mb = 50 * 2**20
    piece = b"a" * 2**18
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with served(embedded_app) as (host, port):
        # Content-Length says it: refused at once, before a byte of the body is sent.
        status, body, sent = _send_until_answered(
            host,
            port,
            f"{head}Content-Length: {fifty_mb}\r\n\r\n".encode(),
            [piece] * (fifty_mb // len(piece)),
            chunked=False,
            first_wait_s=10,
        )
        assert status == "HTTP/1.1 413 Request Entity Too Large"
        assert f"GISTNET_{setting}_MAX_BODY_BYTES" in body["detail"]
        assert sent == 0

        # Streamed with no length: refused once the bytes counted pass the limit.
        status, body, sent = _send_until_answered(
            host,
            port,
            f"{head}Transfer-Encoding: chunked\r\n\r\n".encode(),
            [piece] * (fifty_mb // len(piece)),
            chunked=True,
        )
        assert status == "HTTP/1.1 413 Request Entity Too Large"
        assert f"larger than {limit} bytes" in body["detail"]
        # What was sent: the limit, and what the sockets' buffers took before the answer.
        assert sent < limit + 16 * 2**20 < fifty_mb
