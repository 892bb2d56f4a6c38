"""POST /score: the teacher's log-probabilities of a continuation after a context of raw
and compressed parts."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.context_schemas import ScoreCreate, ScorePublic
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
from api.errors import error_responses
from api.validation import RequestProblem

router = APIRouter(prefix="/score", tags=["contexts"])


@router.post(
    "", response_model=ScorePublic, responses=error_responses(400, 404, 409, 413, 422, 429, 503)
)
async def score(
    body: ScoreCreate, request: Request, settings: SettingsDep, engines: EnginesDep
) -> ScorePublic:
    """Each continuation token's log-probability, read after the context and the tokens
    before it, in one teacher pass."""
    engine, memories = await context_engine(request, settings, engines, body.model_id, body.context)
    budget = TokenBudget.of(settings)
    parts = await context_parts(request, engine, body.context, memories, budget)
    continuation = await token_ids(engine, body.continuation, budget, "continuation")
    if len(continuation) == 0:
        raise RequestProblem("continuation: the text makes no token; give one that does")
    check_reads_something(engine, parts, "the continuation")
    check_positions(engine, parts, len(continuation), "the continuation")
    lane = request.app.state.context_lane
    with lane_place(request):
        log_probs = await lane.run(lambda: engine.score(parts, continuation))
    total = float(log_probs.sum())
    return ScorePublic(
        model_id=engine.model_id,
        tokens=continuation.tolist(),
        token_logprobs=log_probs.tolist(),
        sum_logprob=total,
        mean_nll=-total / len(continuation),
        **context_length(engine, parts),
    )
