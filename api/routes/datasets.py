"""POST /datasets, GET /datasets, GET /datasets/{id}."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Response

from api.deps import CeleryDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.idempotency import Idempotency, IdempotencyKeyHeader
from api.jobs_queue import enqueue
from api.schemas import DatasetAccepted, DatasetCreate, DatasetPublic, DatasetsPublic, RowId
from api.validation import check_dataset_request, check_limits
from api.views import dataset_public
from service.db.records import create_dataset, get_dataset, list_datasets
from service.limits import INT32_MAX

router = APIRouter(prefix="/datasets", tags=["datasets"])

ROUTE = "POST /datasets"


@router.post(
    "",
    status_code=202,
    response_model=DatasetAccepted,
    responses=error_responses(400, 413, 422, 503),
)
def create_dataset_route(
    body: DatasetCreate,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
):
    """Validate the config, record the dataset and queue its preparation on `prep`."""
    idempotency = Idempotency.of(
        route=ROUTE, key=idempotency_key, body=body, ttl_s=settings.idempotency_ttl_s
    )
    if (earlier := idempotency.replay(session)) is not None:
        return earlier
    check_limits(body, route=ROUTE, limits=settings.request_limits)
    check_dataset_request(body, data_root=settings.data_root)
    dataset, job = create_dataset(
        session, name=body.dataset_name, config=body.model_dump(exclude_none=True)
    )
    accepted = DatasetAccepted(
        dataset_id=dataset.id,
        job_id=job.id,
        status_url=f"/jobs/{job.id}",
        dataset_url=f"/datasets/{dataset.id}",
    )
    location = f"/datasets/{dataset.id}"
    if earlier := idempotency.commit(session, status_code=202, body=accepted, location=location):
        return earlier
    enqueue(session, celery, job, on_refused=idempotency.forget)
    response.headers["Location"] = location
    return accepted


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
    dataset = get_dataset(session, dataset_id=dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} does not exist")
    return dataset_public(dataset)
