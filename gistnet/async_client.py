"""The service's REST API from asyncio code, on httpx.AsyncClient: the methods of
`gistnet.client.Client`, each to be awaited (the streams, `events` and
`stream_generate`, are async iterators).

    from gistnet.async_client import AsyncClient

    async with AsyncClient("http://127.0.0.1:8000") as gn:   # or GISTNET_URL, GISTNET_API_KEY
        job = await gn.wait(await gn.train(dataset_id, "configs/runs/gistnet_example.yaml"))
        gists = await gn.gist("Once upon a time ...")
        async for event, data in gn.events(job):
            ...

The plain calls are the same operations the synchronous client runs (gistnet.client_calls),
so both send the same requests and return the same answers.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from gistnet.client import _client_settings
from gistnet.client_calls import (
    TERMINAL,
    APIError,
    EventParser,
    Operation,
    ServerUnreachable,
    _Bar,
    _job_id,
    _Operations,
    answer_of,
    settled,
    stream_timeout,
    unpack_model,
)


async def _aparse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    parser = EventParser()
    async for line in response.aiter_lines():
        if (event := parser.feed(line)) is not None:
            yield event


class AsyncClient(_Operations):
    """As `Client`, for asyncio: `await gn.datasets()`, `async with AsyncClient() as gn`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.url, headers = _client_settings(url, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to the API: its JSON answer, or APIError with the server's message."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ServerUnreachable(f"cannot reach {self.url}: {err}") from None
        return answer_of(response, method, path)

    @staticmethod
    def _bind(body: Callable[..., Operation]) -> Callable[..., Any]:
        async def run(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
            steps = body(self, *args, **kwargs)
            try:
                call = next(steps)
                while True:
                    try:
                        answer = await self.request(call.method, call.path, **call.kwargs)
                    except Exception as err:  # the operation may clean up (open files)
                        call = steps.throw(err)
                    else:
                        call = steps.send(answer)
            except StopIteration as done:
                return done.value

        return run

    # ------------------------------------------------------------------ streams

    async def _stream(self, method: str, path: str, **kwargs: Any):
        """The response of a streamed request, its body unread; APIError for an error."""
        request = self._http.build_request(
            method, path, timeout=stream_timeout(self._http), **kwargs
        )
        response = await self._http.send(request, stream=True)
        if response.status_code >= 400:
            await response.aread()  # the error's body, for its message
            await response.aclose()
            answer_of(response, method, path)
        return response

    async def download_model(self, model_id: int, into: str | Path) -> Path:
        """As Client.download_model: the model's folder under `into`."""
        into = Path(into)
        into.mkdir(parents=True, exist_ok=True)
        path = f"/models/{model_id}/download"
        with tempfile.TemporaryFile() as archive:
            try:
                response = await self._stream("GET", path)
                try:
                    async for chunk in response.aiter_bytes():
                        archive.write(chunk)
                finally:
                    await response.aclose()
            except httpx.TransportError as err:
                raise ServerUnreachable(f"download of {path} broke: {err}") from None
            return unpack_model(archive, into, model_id)

    async def events(
        self, job: int | Mapping[str, Any], *, after_step: int | None = None
    ) -> AsyncIterator[tuple[str, Any]]:
        """As Client.events: ("state", job), ("metrics", {"data": points}) ... ("end", job)."""
        params = {"after_step": after_step} if after_step is not None else {}
        path = f"/jobs/{_job_id(job)}/events"
        try:
            response = await self._stream("GET", path, params=params)
            try:
                async for event in _aparse_events(response):
                    yield event
            finally:
                await response.aclose()
        except httpx.TransportError as err:
            raise ServerUnreachable(f"event stream of {path} broke: {err}") from None

    async def follow_logs(
        self, job: int | Mapping[str, Any], *, tail: int = 1000, after_id: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """As Client.follow_logs: the job's log lines as they come, until it ends."""
        params = {"follow": "true", "tail": tail}
        if after_id is not None:
            params["after_id"] = after_id
        path = f"/jobs/{_job_id(job)}/logs"
        try:
            response = await self._stream("GET", path, params=params)
            try:
                async for event, data in _aparse_events(response):
                    if event == "log":
                        yield data
            finally:
                await response.aclose()
        except httpx.TransportError as err:
            raise ServerUnreachable(f"log stream of {path} broke: {err}") from None

    async def wait(
        self,
        job: int | Mapping[str, Any],
        *,
        progress: bool = False,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> dict[str, Any]:
        """As Client.wait: the job's last state once it ends, from its event stream (by
        polling if the stream breaks); JobFailed unless it succeeded."""
        job_id = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(enabled=progress)
        state: dict[str, Any] | None = None
        try:
            try:
                async for event, data in self.events(job_id):
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
                    await asyncio.sleep(1.0)
                state = await self.job(job_id)
                bar.show(state)
        finally:
            bar.close()
        return settled(state, timeout=timeout, raise_on_failure=raise_on_failure)

    async def stream_generate(
        self,
        prompt: str | Sequence[int] = "",
        *,
        context: Sequence[Mapping[str, Any]] = (),
        model_id: int | None = None,
        **options: Any,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """As Client.stream_generate: ("token", ...) as each comes, then ("done", answer)."""
        body = {**self._generate_body(prompt, context, model_id, options), "stream": True}
        try:
            response = await self._stream("POST", "/generate", json=body)
            try:
                async for event, data in _aparse_events(response):
                    if event == "error":
                        raise APIError(500, data["detail"], method="POST", path="/generate")
                    yield event, data
            finally:
                await response.aclose()
        except httpx.TransportError as err:
            raise ServerUnreachable(f"the generation's stream broke: {err}") from None
