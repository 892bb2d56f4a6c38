"""POST /datasets/import: a dataset another tool already wrote, registered in the service.

Users arrive with shards made by the seed's `prepare_dataset` (variable-length list
columns, the seed's metadata.yaml, or a shard with no metadata at all). The request names
the folder or shard under the data root; a `prep` job copies the shards under the artifact
root and writes metadata.yaml in this platform's form, after which the dataset trains,
evaluates and serves like one prepared here.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import CeleryDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.idempotency import IdempotencyKeyHeader
from api.jobs import Accepted, accept_job
from api.schemas import DatasetAccepted, DatasetImport
from api.validation.imports import check_import_request
from service.db.records import create_dataset

ROUTE = "POST /datasets/import"

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "/import",
    status_code=202,
    response_model=DatasetAccepted,
    responses=error_responses(400, 413, 422, 503),
)
def import_dataset_route(
    body: DatasetImport,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
):
    """Check where the dataset is and that its tokenizer and teacher are known, record
    it, and queue the copy on `prep`."""

    def record() -> Accepted:
        source = check_import_request(
            body, data_store=settings.data_store(), model_roots=settings.model_folders
        )
        config = {
            "dataset_name": body.dataset_name,
            "tokenizer": source["tokenizer"],
            "teacher_model": source["teacher_model"],
            "import": {"path": source["path"]},
        }
        dataset, job = create_dataset(session, name=body.dataset_name, config=config)
        return Accepted.dataset(dataset, job)

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
