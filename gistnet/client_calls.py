"""What the synchronous and the asynchronous client share: the errors, the event-stream
parser, and every plain call of the API written once, as a generator of requests.

An operation yields each `Call` it makes and is sent the JSON answer back; it returns
what the method returns. `Client` (gistnet.client) runs operations with httpx.Client and
`AsyncClient` (gistnet.async_client) with httpx.AsyncClient, so both have the same methods
with the same bodies, and only the streams (events, wait, downloads, token streams),
which read as they go, are written for each.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import tarfile
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from gistnet.client_configs import content_type, load_dataset_config, load_run_config
from gistnet.errors import GistNetError

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
# The server sends a keep-alive at least every 15 s: a read waiting longer has lost it.
STREAM_READ_TIMEOUT_S = 60.0


class APIError(GistNetError):
    """The server refused a request: `status_code` and the server's message (`detail`)."""

    def __init__(self, status_code: int, detail: str, *, method: str = "", path: str = ""):
        super().__init__(f"{method} {path} -> {status_code}: {detail}".strip())
        self.status_code, self.detail, self.method, self.path = status_code, detail, method, path


class ServerUnreachable(GistNetError):
    """No HTTP answer at all: wrong URL, server down, network."""


class JobFailed(GistNetError):
    """`wait` saw the job end failed or cancelled; `job` is its last state."""

    def __init__(self, job: dict[str, Any]):
        error = (job.get("error") or {}).get("message") or "no message"
        super().__init__(f"{job['kind']} job {job['id']} {job['status']}: {error}")
        self.job = job


@dataclass(frozen=True)
class GistAnswer:
    """A POST /gist answer: the vectors, and where the teacher reads them. Block i's
    vector j stands at the block's position T-k+j; with `bos_sink`, the embedding of
    `sink_token_id` stands right before them (T-k-1)."""

    vectors: np.ndarray  # (N, D) float32, or (N, k, D) for k > 1
    model_id: int
    gists_per_block: int
    bos_sink: bool
    sink_token_id: int | None


def _job_id(job: int | Mapping[str, Any]) -> int:
    """A job id from an id, an accepted answer ({job_id, ...}) or a job ({id, ...})."""
    if isinstance(job, Mapping):
        return int(job["job_id"] if "job_id" in job else job["id"])
    return int(job)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)


def answer_of(response: httpx.Response, method: str, path: str) -> Any:
    """A response's JSON, or APIError with the server's message."""
    if response.status_code >= 400:
        raise APIError(response.status_code, _detail(response), method=method, path=path)
    return response.json() if response.content else None


class EventParser:
    """Server-Sent Events, one line at a time (a sync or an async stream's lines): `feed`
    returns (event name, parsed JSON data) when a line ends an event, else None."""

    def __init__(self) -> None:
        self.event, self.data = "message", []

    def feed(self, line: str) -> tuple[str, Any] | None:
        if not line:  # a blank line ends an event
            done = (self.event, json.loads("\n".join(self.data))) if self.data else None
            self.event, self.data = "message", []
            return done
        if line.startswith(":"):  # a comment: the server's keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """Server-Sent Events from a stream's lines: (event name, parsed JSON data)."""
    parser = EventParser()
    for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event


def settled(state: dict[str, Any], *, timeout: float | None, raise_on_failure: bool):
    """`wait`'s answer from the job's last state: TimeoutError while it still runs,
    JobFailed for a job that ended otherwise than succeeded (unless told not to)."""
    if state["status"] not in TERMINAL:
        raise TimeoutError(f"job {state['id']} still {state['status']} after {timeout}s")
    if raise_on_failure and state["status"] != "succeeded":
        raise JobFailed(state)
    return state


def stream_timeout(http: httpx.Client | httpx.AsyncClient) -> httpx.Timeout:
    return httpx.Timeout(http.timeout.connect, read=STREAM_READ_TIMEOUT_S)


def unpack_model(archive: IO[bytes], into: Path, model_id: int) -> Path:
    """GET /models/{id}/download's tar, read from its start, unpacked under `into`."""
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        tar.extractall(into, filter="data")  # no member lands outside `into`
    return into / f"gistnet-{model_id}"


# --------------------------------------------------------------------------- operations


class Call:
    """One request an operation makes: what httpx's `request` takes."""

    def __init__(self, method: str, path: str, **kwargs: Any):
        self.method, self.path, self.kwargs = method, path, kwargs


Operation = Generator[Call, Any, Any]


def operation(body: Callable[..., Operation]) -> Callable[..., Operation]:
    """Marks a method of `_Operations`: each client class runs it with its own driver."""
    body.is_operation = True
    return body


class _Operations:
    """Every plain call of the API, once. A subclass says how to run one (`_bind`): its
    methods of the same names are then the operations run by it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, body in vars(_Operations).items():
            if getattr(body, "is_operation", False) and name not in vars(cls):
                setattr(cls, name, functools.wraps(body)(cls._bind(body)))

    @staticmethod
    def _bind(body: Callable[..., Operation]) -> Callable[..., Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ datasets

    @operation
    def create_dataset(
        self,
        config: Mapping[str, Any] | str | Path,
        *,
        files: Mapping[str, Sequence[str | Path]] | None = None,
    ) -> dict[str, Any]:
        """Queue a dataset's preparation: {dataset_id, job_id, ...}.

        `config` is the dataset config as a dict, or a YAML file (see
        `load_dataset_config`: its local `source` files are uploaded). `files` maps a
        split to .txt / .jsonl files to upload for it."""
        if isinstance(config, str | Path):
            config, found = load_dataset_config(config)
            files = {**found, **(files or {})}
        config = dict(config)
        if not files:
            return (yield Call("POST", "/datasets", json=config))
        with contextlib.ExitStack() as stack:
            parts = [
                (split, (Path(p).name, stack.enter_context(open(p, "rb")), content_type(p)))
                for split, paths in files.items()
                for p in paths
            ]
            return (
                yield Call("POST", "/datasets", data={"config": json.dumps(config)}, files=parts)
            )

    @operation
    def datasets(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return (yield Call("GET", "/datasets", params={"limit": limit, "offset": offset}))["data"]

    @operation
    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return (yield Call("GET", f"/datasets/{dataset_id}"))

    # ------------------------------------------------------------------ training, models

    @operation
    def train(
        self,
        dataset_id: int,
        config: Mapping[str, Any] | str | Path | None = None,
        *,
        split: str = "train",
        **training: Any,
    ) -> dict[str, Any]:
        """Queue a training run: {job_id, status_url}. `config` is a run config (dict or
        YAML file with `preset`, `model` and `training`); keyword arguments override
        `training` keys, e.g. `max_steps=200`."""
        if isinstance(config, str | Path):
            config = load_run_config(config)
        config = dict(config or {})
        body = {
            "dataset_id": dataset_id,
            "split": split,
            "model": dict(config.get("model") or {}),
            "training": {**(config.get("training") or {}), **training},
        }
        if config.get("preset") is not None:
            body["preset"] = config["preset"]
        return (yield Call("POST", "/train", json=body))

    @operation
    def models(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return (yield Call("GET", "/models", params={"limit": limit, "offset": offset}))["data"]

    @operation
    def model(self, model_id: int) -> dict[str, Any]:
        return (yield Call("GET", f"/models/{model_id}"))

    # ------------------------------------------------------------------ evaluations

    @operation
    def evaluate(
        self,
        model_id: int,
        dataset_id: int | None = None,
        *,
        split: str = "validation",
        max_examples: int | None = None,
        bootstrap_samples: int = 1000,
        seed: int = 0,
        oracle_examples: int | None = None,
        refine: Mapping[str, Any] | None = None,
        mode: str = "blocks",
        context_tokens: int | None = None,
        recent_tokens: int | None = None,
        score_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Queue a ΔNLL@H evaluation (on the model's own dataset unless told another):
        {evaluation_id, job_id, ...}. `refine` ({} for the defaults) adds the refined
        gists as a condition. `mode="long"` scores `score_tokens` after a context of
        `context_tokens`, whole, truncated and with all but `recent_tokens` compressed."""
        if dataset_id is None:
            dataset_id = (yield from _Operations.model(self, model_id))["dataset_id"]
        body = {
            "model_id": model_id,
            "dataset_id": dataset_id,
            "split": split,
            "max_examples": max_examples,
            "bootstrap_samples": bootstrap_samples,
            "seed": seed,
            "oracle_examples": oracle_examples,
            "refine": None if refine is None else dict(refine),
        }
        if mode != "blocks":  # a server without the long mode still takes the rest
            body.update(mode=mode, context_tokens=context_tokens, recent_tokens=recent_tokens,
                        score_tokens=score_tokens)  # fmt: skip
        return (yield Call("POST", "/evaluations", json=body))

    @operation
    def evaluation(self, evaluation_id: int) -> dict[str, Any]:
        return (yield Call("GET", f"/evaluations/{evaluation_id}"))

    # ------------------------------------------------------------------ jobs

    @operation
    def jobs(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit}.items() if v}
        return (yield Call("GET", "/jobs", params=params))["data"]

    @operation
    def job(self, job: int | Mapping[str, Any]) -> dict[str, Any]:
        return (yield Call("GET", f"/jobs/{_job_id(job)}"))

    @operation
    def job_metrics(self, job: int | Mapping[str, Any]) -> list[dict[str, Any]]:
        return (yield Call("GET", f"/jobs/{_job_id(job)}/metrics"))["data"]

    @operation
    def cancel(self, job: int | Mapping[str, Any]) -> dict[str, Any]:
        return (yield Call("POST", f"/jobs/{_job_id(job)}/cancel"))

    # ------------------------------------------------------------------ gists

    @operation
    def gist(
        self,
        blocks_or_text: str | Sequence[Sequence[int]] | np.ndarray,
        *,
        model_id: int | None = None,
        encoding: str = "base64",
        refine: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Gists as an (N, D) float32 array (N, k, D for a model with k gists per block):
        of a text (cut into full blocks by the model's tokenizer; a short tail is left
        out) or of (N, T) token ids. The newest model unless `model_id`. base64 carries
        the exact float32 bytes and is smaller. `refine` ({} for the defaults, or e.g.
        {"samples": 8, "steps": 50}) refines each gist from its block (slower; see
        gistnet.refine). `gist_answer` also says where the teacher reads them."""
        answer = yield from _Operations.gist_answer(
            self, blocks_or_text, model_id=model_id, encoding=encoding, refine=refine
        )
        return answer.vectors

    @operation
    def gist_answer(
        self,
        blocks_or_text: str | Sequence[Sequence[int]] | np.ndarray,
        *,
        model_id: int | None = None,
        encoding: str = "base64",
        refine: Mapping[str, Any] | None = None,
    ) -> GistAnswer:
        """As `gist`, with what a caller needs to put the gists in a teacher's input: the
        model, k, and for a model trained with bos_sink the token whose embedding goes
        right before a block's gists."""
        body: dict[str, Any] = {"encoding": encoding}
        if model_id is not None:
            body["model_id"] = model_id
        if refine is not None:
            body["refine"] = dict(refine)
        if isinstance(blocks_or_text, str):
            body["text"] = blocks_or_text
        else:
            body["blocks"] = np.asarray(blocks_or_text, dtype=np.int64).tolist()
        answer = yield Call("POST", "/gist", json=body)
        return GistAnswer(
            vectors=decode_gists(answer),
            model_id=int(answer["model_id"]),
            gists_per_block=int(answer.get("gists_per_block") or 1),
            bos_sink=bool(answer.get("bos_sink")),
            sink_token_id=answer.get("sink_token_id"),
        )

    # ------------------------------------------------------------------ contexts

    @operation
    def score(
        self,
        continuation: str | Sequence[int],
        *,
        context: Sequence[Mapping[str, Any]] = (),
        model_id: int | None = None,
    ) -> dict[str, Any]:
        """The teacher's log-probabilities of `continuation` (a text or token ids) after
        `context`, a list of parts: {"text": ...}, {"compress": ...}, {"tokens": [...]},
        {"compress_tokens": [...]} or {"memory_id": N}. Answers {tokens, token_logprobs,
        sum_logprob, mean_nll, context_length, uncompressed_length, ...}."""
        body = {"model_id": model_id, "context": [dict(p) for p in context]}
        body["continuation"] = continuation if isinstance(continuation, str) else list(continuation)
        return (yield Call("POST", "/score", json=body))

    def _generate_body(self, prompt, context, model_id, options) -> dict[str, Any]:
        return {
            "model_id": model_id,
            "context": [dict(p) for p in context],
            "prompt": prompt if isinstance(prompt, str) else list(prompt),
            **options,
        }

    @operation
    def generate(
        self,
        prompt: str | Sequence[int] = "",
        *,
        context: Sequence[Mapping[str, Any]] = (),
        model_id: int | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        ignore_eos: bool = False,
    ) -> dict[str, Any]:
        """New tokens after `context` (parts, as for `score`) and `prompt`: {token_ids,
        text, finish_reason, context_length, ...}. Greedy at temperature 0."""
        options = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "ignore_eos": ignore_eos,
        }
        body = self._generate_body(prompt, context, model_id, options)
        return (yield Call("POST", "/generate", json=body))

    @operation
    def create_memory(
        self,
        document: str | Sequence[int],
        *,
        model_id: int | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Compress a document (a text or token ids) once; name it in a context as
        {"memory_id": answer["id"]}."""
        body: dict[str, Any] = {"model_id": model_id, "name": name}
        if isinstance(document, str):
            body["text"] = document
        else:
            body["tokens"] = list(document)
        return (yield Call("POST", "/memories", json=body))

    @operation
    def memories(
        self, *, model_id: int | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        params = {"limit": limit, "offset": offset}
        if model_id is not None:
            params["model_id"] = model_id
        return (yield Call("GET", "/memories", params=params))["data"]

    @operation
    def memory(self, memory_id: int) -> dict[str, Any]:
        return (yield Call("GET", f"/memories/{memory_id}"))

    @operation
    def delete_memory(self, memory_id: int) -> None:
        yield Call("DELETE", f"/memories/{memory_id}")

    @operation
    def job_logs(
        self, job: int | Mapping[str, Any], *, tail: int = 1000, after_id: int | None = None
    ) -> list[dict[str, Any]]:
        """What the worker logged for the job, oldest first: the last `tail` lines, or
        those after line `after_id`."""
        params = {"tail": tail} if after_id is None else {"tail": tail, "after_id": after_id}
        return (yield Call("GET", f"/jobs/{_job_id(job)}/logs", params=params))["data"]

    @operation
    def health(self) -> dict[str, Any]:
        return (yield Call("GET", "/health"))

    @operation
    def info(self) -> dict[str, Any]:
        """The server's versions, device, loaded models and the limits it holds requests to."""
        return (yield Call("GET", "/info"))


def decode_gists(answer: Mapping[str, Any]) -> np.ndarray:
    """A POST /gist answer's vectors as an (N, D) float32 array, or (N, k, D) for a model
    with k > 1 gists per block, whatever the encoding."""
    gists, dim = answer["gists"], int(answer["dim"])
    slots = int(answer.get("gists_per_block") or 1)
    shape = (len(gists), dim) if slots == 1 else (len(gists), slots, dim)
    if answer.get("encoding") == "base64":
        raw = b"".join(base64.b64decode(g) for g in gists)
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    return np.asarray(gists, dtype=np.float32).reshape(shape)


class _Bar:
    """A tqdm bar fed with job states: steps against max_steps, the loss as a postfix."""

    def __init__(self, *, enabled: bool):
        self.enabled, self.bar = enabled, None

    def show(self, job: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        progress = job.get("progress") or {}
        if self.bar is None:
            self.bar = tqdm(desc=f"{job['kind']} job {job['id']}", unit="step", dynamic_ncols=True)
        total, step = progress.get("max_steps"), progress.get("step")
        if total and self.bar.total != total:
            self.bar.total = total
        if step is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)
        postfix = {"status": job["status"]}
        if progress.get("loss") is not None:
            postfix["loss"] = f"{progress['loss']:.4g}"
        detail = progress.get("detail") or {}
        for key in ("split", "documents", "tokens"):
            if key in detail:
                postfix[key] = detail[key]
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
