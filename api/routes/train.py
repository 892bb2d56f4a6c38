"""POST /train: queue a training run on a prepared dataset."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from api.deps import CeleryDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.idempotency import IdempotencyKeyHeader
from api.jobs import Accepted, accept_job
from api.schemas import JobAccepted, TrainCreate
from api.validation.train import train_settings_of
from service.db.records import create_training_job, dataset_job, get_dataset
from service.queue import ProductStatus

router = APIRouter(prefix="/train", tags=["training"])

ROUTE = "POST /train"


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses=error_responses(400, 404, 409, 413, 422, 503),
)
def start_training(
    body: TrainCreate,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
):
    """Check the run against the bounds, the dataset and a worker's memory (404, 409, 422
    before anything is queued), then queue it on `train`."""

    def record() -> Accepted:
        dataset = get_dataset(session, dataset_id=body.dataset_id)
        if dataset is None:
            raise HTTPException(404, f"dataset {body.dataset_id} does not exist")
        if dataset.status != ProductStatus.READY:
            job = dataset_job(session, dataset_id=dataset.id)
            hint = f"; follow job {job.id} at /jobs/{job.id}" if job else ""
            raise HTTPException(
                409, f"dataset {dataset.id} is {dataset.status}, not ready: train once it is{hint}"
            )
        train_settings = train_settings_of(
            body,
            dataset_info=dataset.info,
            worker_memory=settings.worker_memory,
            mlflow_uri=settings.mlflow_tracking_uri,
        )
        job = create_training_job(session, dataset_id=dataset.id, settings=train_settings.to_dict())
        accepted = JobAccepted(job_id=job.id, status_url=f"/jobs/{job.id}")
        return Accepted(job=job, body=accepted, location=f"/jobs/{job.id}")

    return accept_job(
        route=ROUTE,
        request=body,
        idempotency_key=idempotency_key,
        settings=settings,
        session=session,
        celery=celery,
        record=record,
        response=response,
    )
