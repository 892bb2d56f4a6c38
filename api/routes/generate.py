"""POST /generate: new tokens after a context of raw and compressed parts and a prompt,
answered whole or streamed as Server-Sent Events.

The context and prompt are prefilled once into the teacher's key-value cache, then each
token is one teacher pass over that token alone, in the scoring and generating lane. A
client that goes away stops its generation at the next token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from api.context_schemas import GenerateCreate, GenerationPublic, GenerationToken
from api.contexts import (
    TokenBudget,
    check_positions,
    check_reads_something,
    context_engine,
    context_length,
    context_parts,
    lane_place,
    token_ids,
)
from api.deps import EnginesDep, SettingsDep
from api.engine import ContextPart, GistEngine
from api.errors import error_responses
from api.validation import RequestProblem
from gistnet.continuation import Sampling

router = APIRouter(prefix="/generate", tags=["contexts"])

_STREAM = {
    "description": "with `stream: true`: Server-Sent Events, a `token` event "
    "(GenerationToken) per new token, then `done` (GenerationPublic), or `error` ({detail})",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


class _Run:
    """One generation's tokens, made in the lane one at a time while the client is there."""

    def __init__(self, request: Request, engine: GistEngine, parts: list[ContextPart], body):
        self.request, self.engine, self.parts = request, engine, parts
        self.max_new_tokens = body.max_new_tokens
        self.sampling = Sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed)
        self.stop = None if body.ignore_eos else engine.eos_token_id
        self.token_ids: list[int] = []
        self.finish_reason = "length"

    async def tokens(self) -> AsyncIterator[int]:
        lane = self.request.app.state.context_lane
        made = self.request.app.state.metrics.generated_tokens
        generation = await lane.run(lambda: self.engine.generation(self.parts, self.sampling))
        for _ in range(self.max_new_tokens):
            if await self.request.is_disconnected():
                return
            token = await lane.run(generation.step)
            if token == self.stop:
                self.finish_reason = "stop"
                return
            self.token_ids.append(token)
            made.inc()
            yield token

    def answer(self, prompt_tokens: int) -> GenerationPublic:
        return GenerationPublic(
            model_id=self.engine.model_id,
            token_ids=self.token_ids,
            text=self.engine.decode(self.token_ids),
            finish_reason=self.finish_reason,
            prompt_tokens=prompt_tokens,
            **context_length(self.engine, self.parts),
        )


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def _stream(run: _Run, place, prompt_tokens: int) -> AsyncIterator[str]:
    """`token` events as the tokens come, each with the text it adds to what came before
    (a character may take several tokens), then `done`."""
    try:
        text = ""
        async for token in run.tokens():
            whole = run.engine.decode(run.token_ids)
            piece = None if whole is None else whole[len(text) :]
            text = whole or ""
            index = len(run.token_ids) - 1
            yield _event(
                "token", GenerationToken(index=index, token_id=token, text=piece).model_dump()
            )
        yield _event("done", run.answer(prompt_tokens).model_dump())
    except Exception as err:  # the status line is out: the stream tells what went wrong
        yield _event("error", {"detail": f"generation failed ({type(err).__name__}): {err}"})
    finally:
        place.release()


@router.post(
    "",
    response_model=GenerationPublic,
    responses={**error_responses(400, 404, 409, 413, 422, 429, 503), 200: _STREAM},
)
async def generate(
    body: GenerateCreate, request: Request, settings: SettingsDep, engines: EnginesDep
) -> Response:
    """Up to max_new_tokens tokens after the context and the prompt: greedy at
    temperature 0, else sampled (top_p, seed); ends early at the end-of-text token."""
    if body.max_new_tokens > settings.generate_max_new_tokens:
        raise RequestProblem(
            f"max_new_tokens is {body.max_new_tokens}; this server makes at most "
            f"{settings.generate_max_new_tokens} per request (GISTNET_GENERATE_MAX_NEW_TOKENS)"
        )
    engine, memories = await context_engine(request, settings, engines, body.model_id, body.context)
    budget = TokenBudget.of(settings)
    parts = await context_parts(request, engine, body.context, memories, budget)
    prompt = await token_ids(engine, body.prompt, budget, "prompt")
    if len(prompt):
        parts.append(ContextPart(tokens=prompt))
    check_reads_something(engine, parts, "the generation")
    check_positions(engine, parts, body.max_new_tokens, "max_new_tokens")
    run = _Run(request, engine, parts, body)
    place = lane_place(request)
    if body.stream:
        return StreamingResponse(
            _stream(run, place, len(prompt)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            # Gives the place back even when the stream never started.
            background=BackgroundTask(place.release),
        )
    with place:
        async for _ in run.tokens():
            pass
    return Response(run.answer(len(prompt)).model_dump_json(), media_type="application/json")
