"""GET /models, GET /models/{id}: the checkpoints training jobs produced."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query

from api.deps import SessionDep
from api.errors import error_responses
from api.schemas import ModelPublic, ModelsPublic, RowId
from api.views import model_public
from service.db.records import get_model, list_models
from service.limits import INT32_MAX

router = APIRouter(prefix="/models", tags=["models"])


@router.get(
    "",
    response_model=ModelsPublic,
    response_model_by_alias=True,
    responses=error_responses(422, 503),
)
def list_models_route(
    session: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=INT32_MAX),
) -> ModelsPublic:
    rows, count = list_models(session, limit=limit, offset=offset)
    return ModelsPublic(data=[model_public(session, m) for m in rows], count=count)


@router.get(
    "/{model_id}",
    response_model=ModelPublic,
    response_model_by_alias=True,
    responses=error_responses(404, 422, 503),
)
def get_model_route(model_id: RowId, session: SessionDep) -> ModelPublic:
    """The model with its configs, losses and its latest evaluation."""
    model = get_model(session, model_id=model_id)
    if model is None:
        raise HTTPException(404, f"model {model_id} does not exist")
    return model_public(session, model, with_evaluation=True)
