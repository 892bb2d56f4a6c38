"""GET /jobs, GET /jobs/{id}, GET /jobs/{id}/metrics, GET /jobs/{id}/events,
GET /jobs/{id}/logs, POST /jobs/{id}/cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import SessionDep, SettingsDep
from api.errors import error_responses
from api.events import job_event_stream
from api.logs import job_log_stream, log_lines
from api.schemas import (
    JobLogsPublic,
    JobMetricsPublic,
    JobPublic,
    JobsPublic,
    MetricPoint,
    RowId,
)
from api.views import job_public
from service.artifacts import remove_resume_checkpoint
from service.db.jobs import get_job, list_jobs, request_cancel
from service.db.logs import count_job_logs
from service.db.parts import job_parts
from service.db.records import job_metrics
from service.limits import INT32_MAX
from service.queue import JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _job_or_404(session, job_id: int):
    job = get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return job


@router.get("", response_model=JobsPublic, responses=error_responses(422, 503))
def list_jobs_route(
    session: SessionDep,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=INT32_MAX),
) -> JobsPublic:
    rows, count = list_jobs(session, status=status, kind=kind, limit=limit, offset=offset)
    return JobsPublic(data=[job_public(j) for j in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404, 422, 503))
def get_job_route(job_id: RowId, session: SessionDep) -> JobPublic:
    """A job; a dataset's job prepared in parts also shows each part's progress."""
    job = _job_or_404(session, job_id)
    return job_public(job, parts=job_parts(session, job_id=job.id))


@router.get(
    "/{job_id}/metrics", response_model=JobMetricsPublic, responses=error_responses(404, 422, 503)
)
def get_job_metrics(job_id: RowId, session: SessionDep) -> JobMetricsPublic:
    """The loss curve a training job recorded, one point per step."""
    _job_or_404(session, job_id)
    points = [MetricPoint.model_validate(m) for m in job_metrics(session, job_id=job_id)]
    return JobMetricsPublic(job_id=job_id, data=points, count=len(points))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "an event stream"},
        **error_responses(404, 422, 503),
    },
)
def job_events(
    job_id: RowId,
    request: Request,
    settings: SettingsDep,
    after_step: int | None = Query(
        None, ge=0, le=INT32_MAX, description="send only points after this step"
    ),
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: `state` (the job) when it changes, `metrics` (new loss-curve
    points), and `end` once the job is finished; see api/events.py."""
    # A session of its own, closed before the stream starts: a SessionDep would stay open
    # (on SQLite: hold the database's lock) for as long as the stream runs.
    with request.app.state.sessionmaker() as session:
        _job_or_404(session, job_id)
    if after_step is None and last_event_id and last_event_id.strip().isdigit():
        after_step = int(last_event_id)
    stream = job_event_stream(
        request.app.state.sessionmaker,
        job_id=job_id,
        after_step=after_step,
        poll_s=settings.events_poll_s,
    )
    # no-cache and no proxy buffering: each event must reach the viewer when it is sent.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


# The most lines one answer (or the start of a followed stream) holds.
MAX_TAIL = 10_000


@router.get(
    "/{job_id}/logs",
    response_model=JobLogsPublic,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "the lines, or with follow=true an event stream of them",
        },
        **error_responses(404, 422, 503),
    },
)
def job_log_lines(
    job_id: RowId,
    request: Request,
    settings: SettingsDep,
    tail: int = Query(1000, ge=1, le=MAX_TAIL, description="the last this many lines"),
    after_id: int | None = Query(
        None, ge=0, le=INT32_MAX, description="only lines after this one (a line's id)"
    ),
    follow: bool = Query(False, description="stream the lines as they come, until the job ends"),
    last_event_id: Annotated[str | None, Header()] = None,
):
    """What the worker logged while it ran the job (every attempt), oldest first. With
    `follow=true`, Server-Sent Events: `log` per line, then `end` once the job is finished;
    see api/logs.py."""
    # Sessions of its own: a followed stream must not hold one (on SQLite: the lock) open.
    with request.app.state.sessionmaker() as session:
        _job_or_404(session, job_id)
        if not follow:
            lines = log_lines(session, job_id=job_id, limit=tail, after_id=after_id)
            return JobLogsPublic(
                job_id=job_id, data=lines, count=count_job_logs(session, job_id=job_id)
            )
    if after_id is None and last_event_id and last_event_id.strip().isdigit():
        after_id = int(last_event_id)
    stream = job_log_stream(
        request.app.state.sessionmaker,
        job_id=job_id,
        tail=tail,
        after_id=after_id,
        poll_s=settings.events_poll_s,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobPublic,
    responses=error_responses(404, 409, 413, 422, 503),
)
def cancel_job(job_id: RowId, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops within a few steps."""
    job = _job_or_404(session, job_id)
    if JobStatus(job.status).terminal:
        raise HTTPException(409, f"job {job_id} already {job.status}; there is nothing to cancel")
    job = request_cancel(session, job_id=job_id)
    session.commit()
    if job.status == JobStatus.CANCELLED and job.kind == JobKind.TRAIN:
        # Queued again after a lost worker, it may have a resume checkpoint: never needed now.
        remove_resume_checkpoint(settings.artifact_store(), job_id)
    return job_public(job)
