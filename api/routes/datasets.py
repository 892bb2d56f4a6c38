"""POST /datasets (a JSON config, or files as multipart/form-data), GET /datasets,
GET /datasets/{id}, DELETE /datasets/{id}."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from api.deps import CeleryDep, SessionDep, SettingsDep, require_api_key
from api.errors import error_responses
from api.idempotency import Idempotency, IdempotencyKeyHeader, check_key
from api.jobs import Accepted, accept_job
from api.schemas import DatasetAccepted, DatasetCreate, DatasetPublic, DatasetsPublic, RowId
from api.uploads import (
    UPLOAD_FOLDER,
    arrival_root,
    check_upload_text,
    dataset_config_of,
    is_multipart,
    parse_model,
    receive_upload,
)
from api.validation.datasets import check_dataset_request
from api.views import dataset_public
from gistnet.paths import PathOutsideRoot, path_under
from service.db.deletion import InUse, delete_dataset
from service.db.parts import job_parts
from service.db.records import create_dataset, dataset_job, get_dataset, list_datasets
from service.limits import INT32_MAX
from service.settings import Settings

ROUTE = "POST /datasets"


class _DatasetsRoute(APIRoute):
    """POST /datasets with a multipart body goes to `create_dataset_from_files`, which
    streams the files to disk; FastAPI would read such a body whole into memory before
    any handler saw it. Every other request takes the ordinary route."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        if "POST" not in self.methods:
            return handler

        async def route_handler(request: Request) -> Response:
            if is_multipart(request):
                return await create_dataset_from_files(request)
            return await handler(request)

        return route_handler


router = APIRouter(prefix="/datasets", tags=["datasets"], route_class=_DatasetsRoute)

_MULTIPART_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["config"],
                    "properties": {
                        "config": {
                            "type": "string",
                            "description": "the dataset config as JSON or YAML, splits optional",
                        }
                    },
                    "additionalProperties": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": ".txt or .jsonl files; the field's name is the split",
                    },
                }
            }
        }
    }
}


def _queue_dataset(
    body: DatasetCreate,
    *,
    session: Session,
    settings: Settings,
    celery,
    idempotency_key: str | None,
    idempotency: Idempotency | None = None,
    response: Response | None = None,
    own_upload: str | None = None,
) -> DatasetAccepted | JSONResponse:
    """Check, record and queue; or the first answer, if this is a retry (Idempotency-Key).
    `own_upload`: the data-root key of the request's uploaded files (multipart only)."""

    def record() -> Accepted:
        check_dataset_request(
            body,
            data_store=settings.data_store(),
            model_roots=settings.model_folders,
            own_upload=own_upload,
            source_bounds=settings.source_bounds,
        )
        dataset, job = create_dataset(
            session, name=body.dataset_name, config=body.model_dump(exclude_none=True)
        )
        return Accepted.dataset(dataset, job)

    return accept_job(
        route=ROUTE,
        request=body,
        idempotency_key=idempotency_key,
        idempotency=idempotency,
        settings=settings,
        session=session,
        celery=celery,
        record=record,
        response=response,
    )


@router.post(
    "",
    status_code=202,
    response_model=DatasetAccepted,
    responses=error_responses(400, 413, 422, 503),
    openapi_extra=_MULTIPART_BODY,
)
def create_dataset_route(
    body: DatasetCreate,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
):
    """Validate the config, record the dataset and queue its preparation on `prep`.

    As multipart/form-data: a `config` field and .txt / .jsonl files, each under the name
    of its split; they are stored under the data root and read as that split's `source`."""
    return _queue_dataset(
        body,
        session=session,
        settings=settings,
        celery=celery,
        idempotency_key=idempotency_key,
        response=response,
    )


async def create_dataset_from_files(request: Request) -> Response:
    """The multipart form of POST /datasets (api/uploads.py). It bypasses the route's
    dependencies, so it checks the API key (and the Idempotency-Key) itself, before reading
    a byte."""
    state = request.app.state
    settings: Settings = state.settings
    await require_api_key(request, settings)
    idempotency_key = check_key(request.headers.get("idempotency-key"))
    # An object-store data root: the files arrive in a local folder and are published
    # under the same keys before the request's `source` is checked.
    remote = not isinstance(settings.data_root, Path)
    local_root = arrival_root(settings)
    upload = await receive_upload(
        request, data_root=local_root, max_bytes=settings.upload_max_bytes
    )
    try:
        body = parse_model(DatasetCreate, dataset_config_of(upload, data_root=local_root))
        await run_in_threadpool(
            check_upload_text,
            upload,
            {name: split.text_column for name, split in body.splits.items()},
            bounds=settings.source_bounds,
            max_text_bytes=settings.request_limits["uploads.max_text_bytes"],
        )
        # The same request is the same config and the same files: the upload's folder is
        # new each time, so it is left out.
        idempotency = Idempotency.of_digest(
            route=ROUTE,
            key=idempotency_key,
            parts=[json.dumps(upload.fields, sort_keys=True), upload.digest.hexdigest()],
            ttl_s=settings.idempotency_ttl_s,
        )

        def replay() -> JSONResponse | None:
            with state.sessionmaker() as session:
                return idempotency.replay(session)

        # A retry is answered before its files are published: they are there already.
        if (earlier := await run_in_threadpool(replay)) is not None:
            shutil.rmtree(upload.folder, ignore_errors=True)
            return earlier
        key = upload.folder.relative_to(local_root.resolve()).as_posix()
        if remote:
            await run_in_threadpool(settings.data_store().publish_folder, upload.folder, key)
            shutil.rmtree(upload.folder, ignore_errors=True)

        def queue() -> DatasetAccepted | JSONResponse:
            with state.sessionmaker() as session:
                return _queue_dataset(
                    body,
                    session=session,
                    settings=settings,
                    celery=state.celery,
                    idempotency_key=idempotency_key,
                    idempotency=idempotency,
                    own_upload=key,
                )

        accepted = await run_in_threadpool(queue)
    except BaseException:
        shutil.rmtree(upload.folder, ignore_errors=True)
        raise
    if isinstance(accepted, JSONResponse):  # a retry: its files are already there
        shutil.rmtree(upload.folder, ignore_errors=True)
        return accepted
    return JSONResponse(
        accepted.model_dump(), status_code=202, headers={"Location": accepted.dataset_url}
    )


@router.get("", response_model=DatasetsPublic, responses=error_responses(422, 503))
def list_datasets_route(
    session: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=INT32_MAX),
) -> DatasetsPublic:
    rows, count = list_datasets(session, limit=limit, offset=offset)
    return DatasetsPublic(data=[dataset_public(d) for d in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=error_responses(404, 422, 503))
def get_dataset_route(dataset_id: RowId, session: SessionDep) -> DatasetPublic:
    """Status, metadata, shard locations; while prepared in parts, each part's progress."""
    dataset = get_dataset(session, dataset_id=dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} does not exist")
    job = dataset_job(session, dataset_id=dataset.id)
    parts = job_parts(session, job_id=job.id) if job is not None else None
    return dataset_public(dataset, parts=parts)


def _remove_uploads(settings: Settings, config: dict) -> None:
    """The upload folders a dataset's splits read (`uploads/<upload>/<split>/*`)."""
    for split in (config.get("splits") or {}).values():
        source = split.get("source") if isinstance(split, dict) else None
        parts = source.split("/") if isinstance(source, str) else []
        if len(parts) == 4 and parts[0] == UPLOAD_FOLDER:
            with contextlib.suppress(PathOutsideRoot):
                shutil.rmtree(path_under(settings.data_root, *parts[:2]), ignore_errors=True)


@router.delete("/{dataset_id}", status_code=204, responses=error_responses(404, 409, 422, 503))
def delete_dataset_route(dataset_id: RowId, session: SessionDep, settings: SettingsDep) -> Response:
    """The dataset, its jobs, the evaluations measured on it, its shards and its uploaded
    files. 409 while a job works on it or models trained on it exist."""
    dataset = get_dataset(session, dataset_id=dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} does not exist")
    config = dataset.config
    try:
        removed = delete_dataset(session, dataset)
    except InUse as err:
        raise HTTPException(409, str(err)) from None
    session.commit()
    store = settings.artifact_store()
    for folder in removed.folders:
        store.delete_folder(folder)
    _remove_uploads(settings, config)
    return Response(status_code=204)
