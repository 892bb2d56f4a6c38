"""POST /datasets, GET /datasets, GET /datasets/{id}."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Response

from api.deps import CeleryDep, SessionDep, SettingsDep
from api.jobs_queue import enqueue
from api.schemas import DatasetAccepted, DatasetCreate, DatasetPublic, DatasetsPublic
from api.validation import check_dataset_request
from api.views import dataset_public
from service.db.jobs import job_parts
from service.db.records import create_dataset, dataset_job, get_dataset, list_datasets

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=202, response_model=DatasetAccepted)
def create_dataset_route(
    body: DatasetCreate,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
) -> DatasetAccepted:
    """Validate the config, record the dataset and queue its preparation on `prep`."""
    check_dataset_request(body, data_root=settings.data_root)
    dataset, job = create_dataset(
        session, name=body.dataset_name, config=body.model_dump(exclude_none=True)
    )
    session.commit()
    enqueue(session, celery, job)
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return DatasetAccepted(
        dataset_id=dataset.id,
        job_id=job.id,
        status_url=f"/jobs/{job.id}",
        dataset_url=f"/datasets/{dataset.id}",
    )


@router.get("", response_model=DatasetsPublic)
def list_datasets_route(
    session: SessionDep, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)
) -> DatasetsPublic:
    rows, count = list_datasets(session, limit=limit, offset=offset)
    return DatasetsPublic(data=[dataset_public(d) for d in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset_route(dataset_id: int, session: SessionDep) -> DatasetPublic:
    """Status, metadata, shard locations; while prepared in parts, each part's progress."""
    dataset = get_dataset(session, dataset_id=dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} does not exist")
    job = dataset_job(session, dataset_id=dataset.id)
    parts = job_parts(session, job_id=job.id) if job is not None else None
    return dataset_public(dataset, parts=parts)
