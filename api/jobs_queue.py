"""Sending a committed job to its queue, by task name: the API never imports the workers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery
from fastapi import HTTPException
from sqlalchemy.orm import Session

from service.db.jobs import fail_unsent_job
from service.db.models import Job
from service.queue import send_job

log = logging.getLogger(__name__)


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
