"""GET /models, GET /models/{id}, DELETE /models/{id}: the checkpoints training jobs
produced."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request, Response

from api.deps import SessionDep, SettingsDep
from api.errors import error_responses
from api.schemas import ModelPublic, ModelsPublic, RowId
from api.views import model_public
from service.db.deletion import InUse, delete_model
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


@router.delete("/{model_id}", status_code=204, responses=error_responses(404, 409, 422, 503))
def delete_model_route(
    model_id: RowId, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """The model, its training job and loss curve, its evaluations and its checkpoint.
    409 while one of its evaluations runs."""
    model = get_model(session, model_id=model_id)
    if model is None:
        raise HTTPException(404, f"model {model_id} does not exist")
    try:
        removed = delete_model(session, model)
    except InUse as err:
        raise HTTPException(409, str(err)) from None
    session.commit()
    request.app.state.engines.drop(model_id)
    store = settings.artifact_store()
    for folder in removed.folders:
        store.delete_folder(folder)
    return Response(status_code=204)
