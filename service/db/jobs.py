"""A job's life, as conditional updates that are safe when two processes race.

queued -> running -> succeeded | failed | cancelled, and running -> queued when the worker
running it stops beating (the next run is attempt + 1). Every write a running job makes
names the attempt it belongs to: once a job has been handed to another worker, the old
run's writes match no row, so it learns it lost the job instead of overwriting the new run.

A dataset's job may hand its work to parts (`service.db.parts`): it creates them, detaches,
and is taken over to finish once they are done. Finding jobs whose worker or message was
lost is `service.db.recovery`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, selectinload

from service.db.models import Dataset, Evaluation, Job, JobMetric, utcnow
from service.db.parts import (
    end_parent_for_part,
    is_waiting_parent,
    job_parts,
    parts_unfinished,
    stop_parts,
)
from service.queue import PRODUCT_STATUS, QUEUE_OF_KIND, JobKind, JobStatus


class LostJob(Exception):
    """The job is no longer this run's: it was re-queued, finished or handed to another worker."""


def create_job(
    session: Session,
    *,
    kind: JobKind,
    dataset_id: int | None = None,
    params: dict[str, Any] | None = None,
    parent_id: int | None = None,
    part_index: int | None = None,
    part_count: int | None = None,
) -> Job:
    kind = JobKind(kind)
    job = Job(
        kind=kind,
        queue=QUEUE_OF_KIND[kind],
        status=JobStatus.QUEUED,
        dataset_id=dataset_id,
        params=params or {},
        # The caller sends the message right after the commit. If it never gets there (the
        # process dies in between), the job looks like one whose message was lost, and the
        # sweep sends it (`service.db.recovery.queued_jobs_to_send`).
        sends=1,
        sent_at=utcnow(),
        parent_id=parent_id,
        part_index=part_index,
        part_count=part_count,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Job], int]:
    # What each job made comes in two more queries, however many jobs the page holds.
    query = select(Job).options(selectinload(Job.model), selectinload(Job.evaluation))
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    jobs = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return jobs, count


def claim_job(
    session: Session,
    *,
    job_id: int,
    worker: str,
    device: str,
    stale_before: datetime,
    max_attempts: int,
) -> Job | None:
    """Start a run: take a queued job, or a running one whose worker stopped beating.

    Returns the job (its `attempt` is this run's number) or None when the job is not
    there to take: finished, cancelled, or running with a live heartbeat elsewhere. A
    redelivered message for a job that already ran is therefore a no-op.
    """
    now = utcnow()
    taken = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .where(
            or_(
                Job.status == JobStatus.QUEUED,
                and_(Job.status == JobStatus.RUNNING, Job.heartbeat_at < stale_before),
            )
        )
        .where(
            or_(
                Job.attempt < max_attempts,
                # A parent whose parts are all done only has its metadata left to write:
                # that never waits on a worker that might be lost, so it is always let run.
                and_(
                    Job.part_count.is_not(None),
                    Job.parent_id.is_(None),
                    ~parts_unfinished(job_id),
                ),
            )
        )
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker=worker,
            device=device,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def _owned(job_id: int, attempt: int):
    return and_(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempt == attempt)


def _update_own_run(
    session: Session, *, job_id: int, attempt: int, values: dict[str, Any], unless=None
) -> bool:
    """Write to the job as the run `attempt` that owns it. Returns False when `unless` (a
    condition) held and nothing was written; raises LostJob when the run no longer owns
    the job."""
    query = update(Job).where(_owned(job_id, attempt))
    if unless is not None:
        query = query.where(~unless)
    updated = session.execute(query.values(**values).execution_options(synchronize_session=False))
    if updated.rowcount == 1:
        return True
    if unless is not None and session.scalar(select(Job.id).where(_owned(job_id, attempt))):
        return False
    raise LostJob(f"job {job_id} attempt {attempt} is no longer running here")


def beat(session: Session, *, job_id: int, attempt: int) -> bool:
    """Stamp the heartbeat. Returns whether a cancel was asked for; raises LostJob."""
    _update_own_run(session, job_id=job_id, attempt=attempt, values={"heartbeat_at": utcnow()})
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def record_progress(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    step: int | None = None,
    max_steps: int | None = None,
    loss: float | None = None,
    examples_per_sec: float | None = None,
    progress: dict[str, Any] | None = None,
    metrics: Iterable[dict[str, Any]] = (),
    replace_from_step: int | None = None,
) -> None:
    """Progress fields, plus loss-curve points; counts as a heartbeat.

    `replace_from_step` drops points at or after that step first: a resumed run recomputes
    the steps after its checkpoint, and its points replace those of the run that died.
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    for name, value in (
        ("step", step),
        ("max_steps", max_steps),
        ("loss", loss),
        ("examples_per_sec", examples_per_sec),
        ("progress", progress),
    ):
        if value is not None:
            values[name] = value
    _update_own_run(session, job_id=job_id, attempt=attempt, values=values)
    if replace_from_step is not None:
        session.execute(
            delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step >= replace_from_step)
        )
    rows = [{**m, "job_id": job_id, "attempt": attempt, "recorded_at": utcnow()} for m in metrics]
    if rows:
        session.execute(insert(JobMetric), rows)


def finish_job(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    status: JobStatus,
    error: str | None = None,
    error_type: str | None = None,
) -> None:
    """End a run; the dataset or evaluation it makes takes the matching status.

    Raises LostJob when the run no longer owns the job, so the caller's transaction (its
    result rows included) rolls back.
    """
    if not JobStatus(status).terminal:
        raise ValueError(f"{status!r} is not a final status")
    _update_own_run(
        session,
        job_id=job_id,
        attempt=attempt,
        values={
            "status": status,
            "finished_at": utcnow(),
            "error": error,
            "error_type": error_type,
        },
    )
    settle_product(session, job_id=job_id, status=status, error=error)


def requeue_job(
    session: Session, *, job_id: int, attempt: int, error: str, error_type: str
) -> bool:
    """Put a running job back in the queue after a run that failed in a way a new run
    mends (a training process died): the next run resumes from its checkpoint. Returns
    whether it moved; the caller sends the message after committing."""
    moved = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .where(Job.cancel_requested.is_(False))
        .values(
            status=JobStatus.QUEUED,
            heartbeat_at=None,
            error=error,
            error_type=error_type,
            # The caller sends it right after the commit.
            sends=Job.sends + 1,
            sent_at=utcnow(),
            resend_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return moved.rowcount == 1


def settle_product(session: Session, *, job_id: int, status: JobStatus, error: str | None) -> None:
    """What the job makes takes its status (a part's end may end its parent)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return
    if job.kind == JobKind.PREPARE_PART:
        if status != JobStatus.SUCCEEDED and job.parent_id is not None:
            message = end_parent_for_part(session, job, status=status, error=error)
            if message is not None:
                settle_product(session, job_id=job.parent_id, status=status, error=message)
                stop_parts(session, parent_id=job.parent_id, reason=f"stopped: {message}")
        return
    if job.kind == JobKind.PREPARE and job.dataset_id is not None:
        session.execute(
            update(Dataset)
            .where(Dataset.id == job.dataset_id)
            .values(status=PRODUCT_STATUS[status], error=error, updated_at=utcnow())
        )
        if job.part_count is not None and status != JobStatus.SUCCEEDED:
            stop_parts(session, parent_id=job_id, reason=f"stopped: the dataset's job {status}")
    elif job.kind == JobKind.EVALUATE:
        session.execute(
            update(Evaluation)
            .where(Evaluation.job_id == job_id)
            .values(status=PRODUCT_STATUS[status], error=error, finished_at=utcnow())
        )


def request_cancel(session: Session, *, job_id: int) -> Job | None:
    """A queued job is cancelled at once; a running one is asked to stop at its next check.
    A parent left to its parts is cancelled at once too, and its parts with it (queued ones
    at once, running ones at their next check).

    Returns the job as it now stands (None if there is no such job).
    """
    for ends_now, message in (
        (Job.status == JobStatus.QUEUED, "cancelled before it started"),
        (is_waiting_parent(), "cancelled while its parts ran"),
    ):
        dropped = session.execute(
            update(Job)
            .where(Job.id == job_id, ends_now)
            .values(
                status=JobStatus.CANCELLED,
                cancel_requested=True,
                finished_at=utcnow(),
                error=message,
                error_type="Cancelled",
            )
            .execution_options(synchronize_session=False)
        )
        if dropped.rowcount == 1:
            settle_product(session, job_id=job_id, status=JobStatus.CANCELLED, error=message)
            break
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
    stop_parts(session, parent_id=job_id, reason="cancelled with its dataset")
    return session.get(Job, job_id, populate_existing=True)


# --------------------------------------------------------------------------- parents
# A parent's own run: making its parts, leaving them the work, being taken over to finish.


def create_parts(
    session: Session,
    *,
    parent_id: int,
    attempt: int,
    plan: dict[str, Any],
    parts: list[dict[str, Any]],
) -> Sequence[Job]:
    """The parts of a running parent, made once: a rerun of the parent finds them.

    Stores the plan in the parent's params (every part reads its range there) and one
    queued child per entry of `parts` (its params: split, index in the split, shard...).
    Raises LostJob when the parent is no longer this run's.
    """
    parent = session.get(Job, parent_id, populate_existing=True)
    params = (parent.params if parent is not None else None) or {}
    # A rerun writes the plan it read back from these params: the same values again.
    _update_own_run(
        session,
        job_id=parent_id,
        attempt=attempt,
        values={"params": {**params, "plan": plan}, "part_count": len(parts)},
    )
    existing = job_parts(session, job_id=parent_id)
    if existing:
        return existing
    for index, params in enumerate(parts):
        create_job(
            session,
            kind=JobKind.PREPARE_PART,
            dataset_id=parent.dataset_id,
            params=params,
            parent_id=parent_id,
            part_index=index,
            part_count=len(parts),
        )
    return job_parts(session, job_id=parent_id)


def detach_job(session: Session, *, job_id: int, attempt: int) -> bool:
    """Leave a parent to its parts: still running, but with no heartbeat and no worker, so
    recovery never takes its silence for a lost worker. Returns False (and detaches
    nothing) when a cancel was asked for meanwhile: the run then ends it cancelled.
    Raises LostJob when the run no longer owns the job."""
    return _update_own_run(
        session,
        job_id=job_id,
        attempt=attempt,
        values={"heartbeat_at": None, "worker": None},
        unless=Job.cancel_requested.is_(True),
    )


def take_over_parent(session: Session, *, job_id: int, worker: str, device: str) -> Job | None:
    """Take a detached parent whose parts have all finished, to finish it (its attempt
    stays: this continues the run that detached). Returns None unless this caller got it:
    many may try at once, one conditional update lets exactly one through."""
    taken = session.execute(
        update(Job)
        .where(Job.id == job_id, is_waiting_parent(), ~parts_unfinished(job_id))
        .values(heartbeat_at=utcnow(), worker=worker, device=device)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def fail_unsent_job(session: Session, *, job_id: int, error: str) -> None:
    """A queued job whose message never reached the broker: it would wait forever."""
    failed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.FAILED,
            finished_at=utcnow(),
            error=error,
            error_type="BrokerUnavailable",
        )
        .execution_options(synchronize_session=False)
    )
    if failed.rowcount == 1:
        settle_product(session, job_id=job_id, status=JobStatus.FAILED, error=error)
