"""OpenAI's embeddings API over the gist models: POST /v1/embeddings, GET /v1/models.

A tool written for OpenAI's embeddings (its Python client, or anything that speaks its
HTTP shape) points its base URL at `<server>/v1` and gets gists. Errors on these routes
have OpenAI's shape (api/errors.py). Models are named `gistnet-<id>`; `gistnet` alone is
the newest.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as FastAPIPath
from fastapi.concurrency import run_in_threadpool

from api.batching import QueueFull
from api.deps import BatcherDep, EnginesDep, SettingsDep
from api.errors import error_responses
from api.openai_schemas import (
    EmbeddingPublic,
    EmbeddingsCreate,
    EmbeddingsPublic,
    EmbeddingsUsage,
    OpenAIErrorPublic,
    OpenAIModelPublic,
    OpenAIModelsPublic,
)
from api.routes.gist import engine_for
from api.validation.common import RequestProblem
from api.validation.gist import check_gist_text, gist_text_budget
from gistnet.errors import GistNetError
from service.db.records import get_model, list_models, newest_model

router = APIRouter(prefix="/v1", tags=["openai"])

MODEL_PREFIX = "gistnet"
_MODEL_NAME = re.compile(rf"{MODEL_PREFIX}(?:-([1-9][0-9]{{0,9}}))?")
# GET /v1/models lists this many, newest first (OpenAI's list has no pages).
MODELS_LISTED = 1000


def model_name(model_id: int) -> str:
    return f"{MODEL_PREFIX}-{model_id}"


def _model_id(name: str) -> int | None:
    """`gistnet-<id>` -> id; `gistnet` -> None (the newest)."""
    match = _MODEL_NAME.fullmatch(name)
    if match is None:
        raise HTTPException(
            404,
            f"model {name!r} does not exist: name a model `{MODEL_PREFIX}-<id>` "
            f"(GET /v1/models lists them) or `{MODEL_PREFIX}` for the newest",
        )
    return None if match.group(1) is None else int(match.group(1))


def _inputs(value) -> list[str | list[int]]:
    """OpenAI's four input forms as a list of texts and token-id lists."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [value]
    return list(value)


def _token_ids(engine, inputs: list, max_blocks: int) -> list[list[int]]:
    """Each input as token ids: texts tokenized (no further than the block limit allows),
    id lists checked against the teacher's vocabulary."""
    max_characters, max_tokens = gist_text_budget(
        max_blocks=max_blocks, block_size=engine.block_size, longest_token=engine.longest_token
    )
    out = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            check_gist_text(item, max_characters=max_characters, max_blocks=max_blocks)
            out.append(engine.tokenize(item, max_tokens=max_tokens))
            continue
        bad = next((i for i, t in enumerate(item) if not 0 <= t < engine.vocab_size), None)
        if bad is not None:
            raise RequestProblem(
                f"input[{index}][{bad}] is {item[bad]}, outside the teacher's vocabulary "
                f"(0 to {engine.vocab_size - 1})"
            )
        out.append(item)
    return out


def _blocks(ids: list[list[int]], *, block_size: int, max_blocks: int) -> list[np.ndarray]:
    """Each input's full blocks, (n_i, T); an input without one is refused."""
    blocks, total = [], 0
    for index, item in enumerate(ids):
        full = len(item) // block_size
        if full == 0:
            raise RequestProblem(
                f"input[{index}] has {len(item)} tokens, fewer than one block of {block_size}: "
                f"a gist stands for exactly {block_size} tokens"
            )
        total += full
        if total > max_blocks:
            raise RequestProblem(
                f"the inputs make more than {max_blocks} blocks, the most one request takes "
                f"(GISTNET_GIST_MAX_BLOCKS): send them in parts",
                status_code=413,
            )
        blocks.append(np.asarray(item[: full * block_size], dtype=np.int64).reshape(full, -1))
    return blocks


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return vector.tolist()


@router.post(
    "/embeddings",
    response_model=EmbeddingsPublic,
    responses=error_responses(400, 404, 409, 413, 429, 503, model=OpenAIErrorPublic),
)
async def create_embeddings(
    body: EmbeddingsCreate,
    request: Request,
    settings: SettingsDep,
    engines: EnginesDep,
    batcher: BatcherDep,
) -> EmbeddingsPublic:
    """Gists as OpenAI embeddings: one per block of each input (or one per input with
    `pooling: mean`), batched with every other gist request."""
    engine = await engine_for(request, settings, engines, _model_id(body.model))
    max_blocks = settings.gist_max_blocks
    inputs = _inputs(body.input)
    try:
        ids = await run_in_threadpool(_token_ids, engine, inputs, max_blocks)
    except GistNetError as err:  # e.g. a checkpoint that names no tokenizer
        raise RequestProblem(f"input: {err}") from None
    per_input = _blocks(ids, block_size=engine.block_size, max_blocks=max_blocks)
    try:
        gists = await batcher.encode(engine, np.concatenate(per_input))
    except QueueFull as err:
        request.app.state.metrics.gist_queue_full.inc()
        raise HTTPException(
            429, f"the gist queue is full: {err}", headers={"Retry-After": "1"}
        ) from None
    vectors = gists.reshape(len(gists), -1)  # a block's k gists one after the other

    data, start = [], 0
    for input_index, blocks in enumerate(per_input):
        mine = vectors[start : start + len(blocks)]
        start += len(blocks)
        if body.pooling == "mean":
            rows = [(None, mine.mean(axis=0))]
        else:
            rows = list(enumerate(mine))
        for block, vector in rows:
            data.append(
                EmbeddingPublic(
                    index=len(data),
                    embedding=_encoded(vector, body.encoding_format),
                    input_index=input_index,
                    block=block,
                )
            )
    tokens = sum(len(item) for item in ids)
    return EmbeddingsPublic(
        data=data,
        model=model_name(engine.model_id),
        usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _public(model) -> OpenAIModelPublic:
    return OpenAIModelPublic(
        id=model_name(model.id), created=int(model.created_at.timestamp()), owned_by="gistnet"
    )


@router.get(
    "/models",
    response_model=OpenAIModelsPublic,
    responses=error_responses(503, model=OpenAIErrorPublic),
)
def openai_models(request: Request) -> OpenAIModelsPublic:
    """The trained models, newest first (at most 1,000), as OpenAI lists models."""
    with request.app.state.sessionmaker() as session:
        models, _ = list_models(session, limit=MODELS_LISTED)
        return OpenAIModelsPublic(data=[_public(m) for m in models])


@router.get(
    "/models/{model}",
    response_model=OpenAIModelPublic,
    responses=error_responses(400, 404, 503, model=OpenAIErrorPublic),
)
def openai_model(
    model: Annotated[str, FastAPIPath(max_length=100)], request: Request
) -> OpenAIModelPublic:
    """One model by its OpenAI name (`gistnet-<id>`, or `gistnet`: the newest)."""
    model_id = _model_id(model)
    with request.app.state.sessionmaker() as session:
        row = newest_model(session) if model_id is None else get_model(session, model_id=model_id)
        if row is None:
            raise HTTPException(404, f"model {model!r} does not exist: GET /v1/models lists them")
        return _public(row)
