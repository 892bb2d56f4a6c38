"""A Python client for the GistNet service: HTTP only, nothing of the server imported.

    from gistnet.client import Client

    gn = Client("http://127.0.0.1:8000")              # or GISTNET_URL, GISTNET_API_KEY
    ds = gn.create_dataset("configs/data/sample_text.yaml")   # local sources are uploaded
    gn.wait(ds, progress=True)
    model_id = gn.wait(gn.train(ds["dataset_id"], "configs/runs/gistnet_example.yaml"),
                       progress=True)["result"]["model_id"]
    gists = gn.gist("Once upon a time ...")          # (N, D) float32, one row per block
    memory = gn.create_memory(long_text)            # compressed once, read many times
    gn.generate("Q: who ...", context=[{"memory_id": memory["id"]}])["text"]
    gn.score(" the fox", context=[{"compress": long_text}])["mean_nll"]

Every error the server answers is raised as `APIError`, carrying its status code and the
server's message; a job that ends failed or cancelled raises `JobFailed` from `wait`.
The `gistnet` command's client verbs (tools/client_cli.py) are built on this class;
`gistnet.async_client.AsyncClient` has the same methods, to be awaited.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from gistnet.client_calls import (
    DEFAULT_URL,
    TERMINAL,
    APIError,
    GistAnswer,
    JobFailed,
    Operation,
    ServerUnreachable,
    _Bar,
    _job_id,
    _Operations,
    answer_of,
    decode_gists,
    parse_events,
    settled,
    stream_timeout,
    unpack_model,
)

__all__ = [
    "APIError",
    "Client",
    "GistAnswer",
    "JobFailed",
    "ServerUnreachable",
    "decode_gists",
    "parse_events",
]


def _client_settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers from the arguments or GISTNET_URL / GISTNET_API_KEY."""
    url = (url or os.environ.get("GISTNET_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("GISTNET_API_KEY")
    return url, {"Authorization": f"Bearer {key}"} if key else {}


class Client(_Operations):
    """The service's REST API from Python (synchronous, on httpx). The plain calls are
    gistnet.client_calls' operations; the streams are here."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url, headers = _client_settings(url, api_key)
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to the API: its JSON answer, or APIError with the server's message."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ServerUnreachable(f"cannot reach {self.url}: {err}") from None
        return answer_of(response, method, path)

    @staticmethod
    def _bind(body: Callable[..., Operation]) -> Callable[..., Any]:
        def run(self: Client, *args: Any, **kwargs: Any) -> Any:
            steps = body(self, *args, **kwargs)
            try:
                call = next(steps)
                while True:
                    try:
                        answer = self.request(call.method, call.path, **call.kwargs)
                    except Exception as err:  # the operation may clean up (open files)
                        call = steps.throw(err)
                    else:
                        call = steps.send(answer)
            except StopIteration as done:
                return done.value

        return run

    # ------------------------------------------------------------------ streams

    def download_model(self, model_id: int, into: str | Path) -> Path:
        """The model as a folder (config.json, model.safetensors, run.yaml, README.md)
        under `into`: returns `into/gistnet-<id>`, which GistEncoder.from_checkpoint loads."""
        into = Path(into)
        into.mkdir(parents=True, exist_ok=True)
        path = f"/models/{model_id}/download"
        with tempfile.TemporaryFile() as archive:
            try:
                with self._http.stream("GET", path) as response:
                    if response.status_code >= 400:
                        response.read()  # the error's body, for its message
                        answer_of(response, "GET", path)
                    for chunk in response.iter_bytes():
                        archive.write(chunk)
            except httpx.TransportError as err:
                raise ServerUnreachable(f"download of {path} broke: {err}") from None
            return unpack_model(archive, into, model_id)

    def events(
        self, job: int | Mapping[str, Any], *, after_step: int | None = None
    ) -> Iterator[tuple[str, Any]]:
        """The job's event stream: ("state", job), ("metrics", {"data": points}) ... and
        finally ("end", job)."""
        params = {"after_step": after_step} if after_step is not None else {}
        path = f"/jobs/{_job_id(job)}/events"
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=stream_timeout(self._http)
            ) as response:
                if response.status_code >= 400:
                    response.read()  # the error's body, for its message
                    answer_of(response, "GET", path)
                yield from parse_events(response.iter_lines())
        except httpx.TransportError as err:
            raise ServerUnreachable(f"event stream of {path} broke: {err}") from None

    def follow_logs(
        self, job: int | Mapping[str, Any], *, tail: int = 1000, after_id: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The job's log lines as the worker writes them (the last `tail` first, or those
        after line `after_id`), until the job ends."""
        params = {"follow": "true", "tail": tail}
        if after_id is not None:
            params["after_id"] = after_id
        path = f"/jobs/{_job_id(job)}/logs"
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=stream_timeout(self._http)
            ) as response:
                if response.status_code >= 400:
                    response.read()  # the error's body, for its message
                    answer_of(response, "GET", path)
                for event, data in parse_events(response.iter_lines()):
                    if event == "log":
                        yield data
        except httpx.TransportError as err:
            raise ServerUnreachable(f"log stream of {path} broke: {err}") from None

    def wait(
        self,
        job: int | Mapping[str, Any],
        *,
        progress: bool = False,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> dict[str, Any]:
        """Block until the job ends and return its last state. Follows the event stream
        (a tqdm bar with `progress=True`), polling instead if the stream breaks. A job that
        ends failed or cancelled raises JobFailed unless `raise_on_failure=False`."""
        job_id = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(enabled=progress)
        state: dict[str, Any] | None = None
        try:
            try:
                for event, data in self.events(job_id):
                    if event in ("state", "end"):
                        state = data
                        bar.show(state)
                    if event == "end" or (deadline and time.monotonic() > deadline):
                        break
            except ServerUnreachable:
                state = None  # the stream broke: go on by polling
            while state is None or state["status"] not in TERMINAL:
                if deadline and time.monotonic() > deadline:
                    break
                if state is not None:
                    time.sleep(1.0)
                state = self.job(job_id)
                bar.show(state)
        finally:
            bar.close()
        return settled(state, timeout=timeout, raise_on_failure=raise_on_failure)

    def stream_generate(
        self,
        prompt: str | Sequence[int] = "",
        *,
        context: Sequence[Mapping[str, Any]] = (),
        model_id: int | None = None,
        **options: Any,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """As `generate`, token by token: ("token", {index, token_id, text}) as each comes,
        then ("done", the answer `generate` gives). Leaving the loop early stops the
        generation on the server."""
        body = {**self._generate_body(prompt, context, model_id, options), "stream": True}
        timeout = stream_timeout(self._http)
        try:
            with self._http.stream("POST", "/generate", json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()  # the error's body, for its message
                    answer_of(response, "POST", "/generate")
                for event, data in parse_events(response.iter_lines()):
                    if event == "error":
                        raise APIError(500, data["detail"], method="POST", path="/generate")
                    yield event, data
        except httpx.TransportError as err:
            raise ServerUnreachable(f"the generation's stream broke: {err}") from None
