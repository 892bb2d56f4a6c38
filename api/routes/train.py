"""POST /train: queue a training run on a prepared dataset."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from api.deps import CeleryDep, SessionDep
from api.jobs_queue import enqueue
from api.schemas import JobAccepted, TrainCreate
from api.validation import check_run_request
from gistnet.config import RunConfig
from service.db.records import create_training_job, dataset_job, get_dataset
from service.queue import ProductStatus

router = APIRouter(prefix="/train", tags=["training"])


@router.post("", status_code=202, response_model=JobAccepted)
def start_training(
    body: TrainCreate, session: SessionDep, celery: CeleryDep, response: Response
) -> JobAccepted:
    """Check the run against the dataset (404, 409, 422 before anything is queued), then
    queue it on `train`."""
    dataset = get_dataset(session, dataset_id=body.dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {body.dataset_id} does not exist")
    if dataset.status != ProductStatus.READY:
        job = dataset_job(session, dataset_id=dataset.id)
        hint = f"; follow job {job.id} at /jobs/{job.id}" if job else ""
        raise HTTPException(
            409, f"dataset {dataset.id} is {dataset.status}, not ready: train once it is{hint}"
        )
    run = RunConfig(model=body.model, training=body.training)
    check_run_request(run, dataset_info=dataset.info, split=body.split)
    job = create_training_job(
        session, dataset_id=dataset.id, split=body.split, run_config=run.model_dump(mode="json")
    )
    session.commit()
    enqueue(session, celery, job)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobAccepted(job_id=job.id, status_url=f"/jobs/{job.id}")
