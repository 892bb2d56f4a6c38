"""GET /models, GET /models/{id}, GET /models/{id}/download, DELETE /models/{id}: the
checkpoints training jobs produced."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import SessionDep, SettingsDep
from api.errors import error_responses
from api.schemas import ModelPublic, ModelsPublic, RowId
from api.views import model_public
from gistnet.checkpoint import export_pretrained
from gistnet.errors import GistNetError
from service.db.deletion import InUse, delete_model
from service.db.records import get_model, latest_evaluation, list_models
from service.limits import INT32_MAX
from service.queue import ProductStatus

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


def _packed(settings, model_id: int, checkpoint: str, evaluation: dict | None) -> Path:
    """The model as a folder (gistnet.pretrained) in a tar file of a temporary folder."""
    work = Path(tempfile.mkdtemp(prefix=f"gistnet-model-{model_id}-"))
    try:
        name = f"gistnet-{model_id}"
        export_pretrained(
            settings.artifact_store().open_local(checkpoint), work / name, evaluation=evaluation
        )
        archive = work / f"{name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(work / name, arcname=name)
        return archive
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@router.get(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "the model folder as a tar"},
        **error_responses(404, 422, 503),
    },
)
async def download_model_route(model_id: RowId, request: Request, settings: SettingsDep):
    """The model as a Hugging Face style folder `gistnet-<id>/` (config.json,
    model.safetensors, run.yaml, README.md with its latest ready evaluation), in a tar."""

    def find():
        with request.app.state.sessionmaker() as session:
            model = get_model(session, model_id=model_id)
            if model is None:
                raise HTTPException(404, f"model {model_id} does not exist")
            latest = latest_evaluation(session, model_id=model_id)
            ready = latest is not None and latest.status == ProductStatus.READY
            return model.checkpoint_path, latest.report if ready else None

    checkpoint, evaluation = await run_in_threadpool(find)
    try:
        archive = await run_in_threadpool(_packed, settings, model_id, checkpoint, evaluation)
    except GistNetError as err:
        raise HTTPException(503, f"model {model_id} cannot be read: {err}") from None
    return FileResponse(
        archive,
        media_type="application/x-tar",
        filename=archive.name,
        background=BackgroundTask(shutil.rmtree, archive.parent, ignore_errors=True),
    )
