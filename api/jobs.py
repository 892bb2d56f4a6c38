"""Accepting a job: the one sequence every route that queues work runs (an
Idempotency-Key's replay, the request's bounds, the rows, one commit, the message to the
queue by task name, `Location`). The API never imports the workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from fastapi import HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.idempotency import Idempotency
from api.schemas import DatasetAccepted
from api.validation import check_limits
from service.db.jobs import fail_unsent_job
from service.db.models import Dataset, Job
from service.queue import send_job
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """What a route recorded: the job to queue, the 202 body and where the product lives."""

    job: Job
    body: BaseModel
    location: str

    @classmethod
    def dataset(cls, dataset: Dataset, job: Job) -> Accepted:
        """A dataset to prepare or import: its job, and the dataset's URL as the place."""
        body = DatasetAccepted(
            dataset_id=dataset.id,
            job_id=job.id,
            status_url=f"/jobs/{job.id}",
            dataset_url=f"/datasets/{dataset.id}",
        )
        return cls(job=job, body=body, location=body.dataset_url)


def accept_job(
    *,
    route: str,
    request: BaseModel,
    idempotency_key: str | None,
    settings: Settings,
    session: Session,
    celery: Celery,
    record: Callable[[], Accepted],
    response: Response | None = None,
    idempotency: Idempotency | None = None,
) -> BaseModel | JSONResponse:
    """Replay a retry's first answer, or check `request` against the route's bounds, call
    `record` (the route's own checks and rows, uncommitted), commit the rows with the
    answer, send the job and set `Location` on `response`. Returns the 202 body, or the
    first answer of a request with the same Idempotency-Key.

    `idempotency`: what makes a retry the same request, for a request that is more than
    its JSON body (multipart uploads); by default the body."""
    if idempotency is None:
        idempotency = Idempotency.of(
            route=route, key=idempotency_key, body=request, ttl_s=settings.idempotency_ttl_s
        )
    if (earlier := idempotency.replay(session)) is not None:
        return earlier
    check_limits(request, route=route, limits=settings.request_limits)
    accepted = record()
    if earlier := idempotency.commit(
        session, status_code=202, body=accepted.body, location=accepted.location
    ):
        return earlier
    enqueue(session, celery, accepted.job, on_refused=idempotency.forget)
    if response is not None:
        response.headers["Location"] = accepted.location
    return accepted.body


def enqueue(
    session: Session,
    celery: Celery,
    job: Job,
    *,
    on_refused: Callable[[Session], None] | None = None,
) -> None:
    """The row is committed first, so the task always finds it. If the broker refuses the
    message, the client is told at once (503) and the job ends `failed` rather than wait
    for the sweep; `on_refused` undoes what else the request recorded (its idempotency key).
    A process that dies before sending leaves a queued job the sweep sends later."""
    try:
        send_job(celery, job_id=job.id, kind=job.kind)
    except Exception as err:
        log.exception("could not queue job %s", job.id)
        message = f"the broker refused the job ({type(err).__name__}: {err}); try again later"
        fail_unsent_job(session, job_id=job.id, error=message)
        session.commit()
        if on_refused is not None:
            on_refused(session)
        raise HTTPException(503, message, headers={"Retry-After": "5"}) from None
