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
The `gistnet` command's client verbs (tools/client_cli.py) are built on this class.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """Server-Sent Events from a stream's lines: (event name, parsed JSON data)."""
    event, data = "message", []
    for line in lines:
        if not line:  # a blank line ends an event
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):  # a comment: the server's keep-alive
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


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


class Client:
    """The service's REST API from Python (synchronous, on httpx)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = (url or os.environ.get("GISTNET_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("GISTNET_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
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
        if response.status_code >= 400:
            raise APIError(response.status_code, _detail(response), method=method, path=path)
        return response.json() if response.content else None

    # ------------------------------------------------------------------ datasets

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
            return self.request("POST", "/datasets", json=config)
        with contextlib.ExitStack() as stack:
            parts = [
                (split, (Path(p).name, stack.enter_context(open(p, "rb")), content_type(p)))
                for split, paths in files.items()
                for p in paths
            ]
            return self.request(
                "POST", "/datasets", data={"config": json.dumps(config)}, files=parts
            )

    def datasets(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return self.request("GET", "/datasets", params={"limit": limit, "offset": offset})["data"]

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return self.request("GET", f"/datasets/{dataset_id}")

    # ------------------------------------------------------------------ training, models

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
        return self.request("POST", "/train", json=body)

    def models(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return self.request("GET", "/models", params={"limit": limit, "offset": offset})["data"]

    def model(self, model_id: int) -> dict[str, Any]:
        return self.request("GET", f"/models/{model_id}")

    def download_model(self, model_id: int, into: str | Path) -> Path:
        """The model as a folder (config.json, model.safetensors, run.yaml, README.md)
        under `into`: returns `into/gistnet-<id>`, which GistEncoder.from_checkpoint loads."""
        import tarfile
        import tempfile

        into = Path(into)
        into.mkdir(parents=True, exist_ok=True)
        path = f"/models/{model_id}/download"
        with tempfile.TemporaryFile() as archive:
            try:
                with self._http.stream("GET", path) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise APIError(
                            response.status_code, _detail(response), method="GET", path=path
                        )
                    for chunk in response.iter_bytes():
                        archive.write(chunk)
            except httpx.TransportError as err:
                raise ServerUnreachable(f"download of {path} broke: {err}") from None
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(into, filter="data")  # no member lands outside `into`
        return into / f"gistnet-{model_id}"

    # ------------------------------------------------------------------ evaluations

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
            dataset_id = self.model(model_id)["dataset_id"]
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
        return self.request("POST", "/evaluations", json=body)

    def evaluation(self, evaluation_id: int) -> dict[str, Any]:
        return self.request("GET", f"/evaluations/{evaluation_id}")

    # ------------------------------------------------------------------ jobs

    def jobs(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit}.items() if v}
        return self.request("GET", "/jobs", params=params)["data"]

    def job(self, job: int | Mapping[str, Any]) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{_job_id(job)}")

    def job_metrics(self, job: int | Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.request("GET", f"/jobs/{_job_id(job)}/metrics")["data"]

    def cancel(self, job: int | Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{_job_id(job)}/cancel")

    def events(
        self, job: int | Mapping[str, Any], *, after_step: int | None = None
    ) -> Iterator[tuple[str, Any]]:
        """The job's event stream: ("state", job), ("metrics", {"data": points}) ... and
        finally ("end", job)."""
        params = {"after_step": after_step} if after_step is not None else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        path = f"/jobs/{_job_id(job)}/events"
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise APIError(response.status_code, _detail(response), method="GET", path=path)
                yield from parse_events(response.iter_lines())
        except httpx.TransportError as err:
            raise ServerUnreachable(f"event stream of {path} broke: {err}") from None

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
        if state["status"] not in TERMINAL:
            raise TimeoutError(f"job {job_id} still {state['status']} after {timeout}s")
        if raise_on_failure and state["status"] != "succeeded":
            raise JobFailed(state)
        return state

    # ------------------------------------------------------------------ gists

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
        return self.gist_answer(
            blocks_or_text, model_id=model_id, encoding=encoding, refine=refine
        ).vectors

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
        answer = self.request("POST", "/gist", json=body)
        return GistAnswer(
            vectors=decode_gists(answer),
            model_id=int(answer["model_id"]),
            gists_per_block=int(answer.get("gists_per_block") or 1),
            bos_sink=bool(answer.get("bos_sink")),
            sink_token_id=answer.get("sink_token_id"),
        )

    # ------------------------------------------------------------------ contexts

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
        return self.request("POST", "/score", json=body)

    def _generate_body(self, prompt, context, model_id, options) -> dict[str, Any]:
        return {
            "model_id": model_id,
            "context": [dict(p) for p in context],
            "prompt": prompt if isinstance(prompt, str) else list(prompt),
            **options,
        }

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
        return self.request("POST", "/generate", json=body)

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
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        try:
            with self._http.stream("POST", "/generate", json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise APIError(
                        response.status_code, _detail(response), method="POST", path="/generate"
                    )
                for event, data in parse_events(response.iter_lines()):
                    if event == "error":
                        raise APIError(500, data["detail"], method="POST", path="/generate")
                    yield event, data
        except httpx.TransportError as err:
            raise ServerUnreachable(f"the generation's stream broke: {err}") from None

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
        return self.request("POST", "/memories", json=body)

    def memories(
        self, *, model_id: int | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        params = {"limit": limit, "offset": offset}
        if model_id is not None:
            params["model_id"] = model_id
        return self.request("GET", "/memories", params=params)["data"]

    def memory(self, memory_id: int) -> dict[str, Any]:
        return self.request("GET", f"/memories/{memory_id}")

    def delete_memory(self, memory_id: int) -> None:
        self.request("DELETE", f"/memories/{memory_id}")

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")


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
