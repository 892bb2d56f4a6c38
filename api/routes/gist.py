"""POST /gist: token blocks (or text) in, gist vectors out, batched across requests."""

from __future__ import annotations

import base64
import json
import logging
import time

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from api.batching import QueueFull
from api.deps import BatcherDep, EnginesDep, SettingsDep
from api.engine import GistEngine
from api.errors import error_responses
from api.schemas import GistRequest, GistResponse
from api.validation.gist import (
    blocks_array,
    check_gist_request,
    check_gist_text,
    check_refine_work,
    gist_text_budget,
    text_blocks,
)
from gistnet.errors import BoundError, GistNetError
from gistnet.pretrained import TeacherMismatch
from service.db.records import get_model, newest_model

log = logging.getLogger(__name__)

router = APIRouter(prefix="/gist", tags=["gists"])


def _find_model(request: Request, model_id: int | None) -> tuple[int, str]:
    # A short session of its own: no transaction stays open while the forward runs.
    with request.app.state.sessionmaker() as session:
        model = newest_model(session) if model_id is None else get_model(session, model_id=model_id)
        if model is None:
            raise HTTPException(
                404,
                "no model has been trained yet: POST /train first"
                if model_id is None
                else f"model {model_id} does not exist",
            )
        return model.id, model.checkpoint_path


def _newest_engine(request: Request, engines) -> tuple[int, str] | GistEngine:
    """The newest model, from the database; while the database is away, the engine that
    was the newest when it last answered, if it is still loaded."""
    try:
        model_id, checkpoint = _find_model(request, None)
    except SQLAlchemyError:
        fallback = engines.newest_model_id
        engine = engines.loaded_engine(fallback) if fallback is not None else None
        if engine is None:
            raise
        log.warning("database unavailable: /gist serves model %s, the newest it knew", fallback)
        return engine
    engines.newest_model_id = model_id
    return model_id, checkpoint


def _load_engine(engines, settings, model_id: int, checkpoint: str):
    """The model's engine; its checkpoint read from the artifact root (through the local
    cache on an object store) only when the engine is not loaded yet."""
    engine = engines.loaded_engine(model_id)
    if engine is not None:
        return engine
    return engines.get(model_id, settings.artifact_store().open_local(checkpoint))


# How long a loaded engine serves its model without asking the database whether the model
# still exists: a model deleted through another API process stops being served within it.
RECHECK_S = 30.0


async def engine_for(request: Request, settings, engines, model_id: int | None) -> GistEngine:
    """The engine of a model (None: the newest), loaded if it is not yet. A loaded model
    checked recently needs no database or thread hand-off: the hot path stays on the event
    loop; while the database is away, a loaded model goes on being served."""
    engine = engines.loaded_engine(model_id) if model_id is not None else None
    if engine is not None and time.monotonic() - engine.checked_at < RECHECK_S:
        return engine
    try:
        if model_id is None:
            found = await run_in_threadpool(_newest_engine, request, engines)
        else:
            found = await run_in_threadpool(_find_model, request, model_id)
    except SQLAlchemyError:
        if engine is None:
            raise
        return engine
    except HTTPException:
        if model_id is not None:
            engines.drop(model_id)  # deleted since it was loaded
        raise
    if isinstance(found, GistEngine):
        return found
    model_id, checkpoint = found
    try:
        engine = await run_in_threadpool(_load_engine, engines, settings, model_id, checkpoint)
    except BoundError as err:  # the checkpoint asks for a model past the bounds
        raise HTTPException(422, f"model {model_id} cannot be served: {err}") from None
    except TeacherMismatch as err:  # retrying will not help: the teacher must change
        raise HTTPException(409, f"model {model_id} cannot be served: {err}") from None
    except GistNetError as err:
        raise HTTPException(503, f"model {model_id} cannot be loaded: {err}") from None
    engine.checked_at = time.monotonic()
    return engine


def _encoded(gists: np.ndarray, encoding: str) -> list:
    if encoding == "base64":  # little-endian float32 bytes, one string per block (k x D, row-major)
        return [
            base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
            for row in gists
        ]
    return gists.tolist()


def _text_to_blocks(engine, text: str, max_blocks: int):
    """Tokenize (no further than the block limit allows), cut into full blocks, and write
    each block back as text (for people)."""
    _, max_tokens = gist_text_budget(
        max_blocks=max_blocks, block_size=engine.block_size, longest_token=engine.longest_token
    )
    ids = engine.tokenize(text, max_tokens=max_tokens)
    blocks, unused = text_blocks(
        ids,
        block_size=engine.block_size,
        max_blocks=max_blocks,
        truncated=len(ids) >= max_tokens,
    )
    return blocks, len(ids), unused, engine.decode_blocks(blocks)


@router.post(
    "",
    response_model=GistResponse,
    responses=error_responses(400, 404, 409, 413, 422, 429, 503),
)
async def gist(
    body: GistRequest,
    request: Request,
    settings: SettingsDep,
    engines: EnginesDep,
    batcher: BatcherDep,
) -> Response:
    """Gists of token blocks (or of a text cut into blocks), batched with other requests."""
    max_blocks = settings.gist_max_blocks
    check_gist_request(body.blocks, body.text, max_blocks=max_blocks)
    engine = await engine_for(request, settings, engines, body.model_id)

    tokens = unused = block_texts = None
    if body.text is not None:
        try:
            # A text too long for the block limit is refused before it is tokenized, and
            # one that may fit is tokenized no further than one token past the limit.
            max_characters, _ = gist_text_budget(
                max_blocks=max_blocks,
                block_size=engine.block_size,
                longest_token=engine.longest_token,
            )
            check_gist_text(body.text, max_characters=max_characters, max_blocks=max_blocks)
            blocks, tokens, unused, block_texts = await run_in_threadpool(
                _text_to_blocks, engine, body.text, max_blocks
            )
        except GistNetError as err:  # e.g. a checkpoint that names no tokenizer
            raise HTTPException(422, f"text: {err}") from None
    else:
        blocks = blocks_array(
            body.blocks, block_size=engine.block_size, vocab_size=engine.vocab_size
        )
    metrics = request.app.state.metrics
    metrics.gist_request_blocks.observe(len(blocks))
    try:
        if body.refine is None:
            gists = await batcher.encode(engine, blocks)
        else:
            check_refine_work(
                len(blocks), body.refine.samples, body.refine.steps, settings.gist_refine_max_work
            )
            gists = await request.app.state.refine_lane.encode(
                engine, blocks, body.refine.settings()
            )
    except QueueFull as err:
        metrics.gist_queue_full.inc()
        queue = "gist queue" if body.refine is None else "refinement lane"
        raise HTTPException(429, f"the {queue} is full: {err}", headers={"Retry-After": "1"}) from None

    # Serialized here: validating thousands of floats through the response model would
    # cost more than the forward of a small model.
    content = {
        "model_id": engine.model_id,
        "dim": engine.dim,
        "block_size": engine.block_size,
        "gists_per_block": engine.gists_per_block,
        "bos_sink": engine.bos_sink,
        "sink_token_id": engine.sink_token_id,
        "encoding": body.encoding,
        "gists": _encoded(gists, body.encoding),
        "tokens": tokens,
        "unused_tokens": unused,
        "block_texts": block_texts,
        "refine": None if body.refine is None else body.refine.model_dump(),
    }
    return Response(json.dumps(content), media_type="application/json")
