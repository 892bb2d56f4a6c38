"""A job's life, as conditional updates that are safe when two processes race.

queued -> running -> succeeded | failed | cancelled, and running -> queued when the worker
running it stops beating (the next run is attempt + 1). Every write a running job makes
names the attempt it belongs to: once a job has been handed to another worker, the old
run's writes match no row, so it learns it lost the job instead of overwriting the new run.

A dataset prepared in parts is a parent job with one child job per part. The parent's run
plans the parts, creates them and then detaches: it stays `running` with no heartbeat
(no process runs it; its parts do the work and are recovered one by one). When the last
part has finished, whoever sees it first takes the parent over (`take_over_parent`) to
check the parts and write the dataset's metadata. A failed part fails the parent, and
cancelling the parent cancels its parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased, selectinload

from service.db.models import Dataset, Evaluation, Job, JobMetric, utcnow
from service.queue import PRODUCT_STATUS, QUEUE_OF_KIND, TERMINAL, JobKind, JobStatus


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
        # sweep sends it (`resend_queued_jobs`).
        sends=1,
        sent_at=utcnow(),
        parent_id=parent_id,
        part_index=part_index,
        part_count=part_count,
    )
    session.add(job)
    session.flush()
    return job


# --------------------------------------------------------------------------- parts


def _is_waiting_parent():
    """A parent whose run has handed the work to its parts: running, nobody beating."""
    return and_(
        Job.status == JobStatus.RUNNING,
        Job.heartbeat_at.is_(None),
        Job.part_count.is_not(None),
        Job.parent_id.is_(None),
    )


def _parts_unfinished(parent_id):
    child = aliased(Job)
    return (
        select(child.id)
        .where(child.parent_id == parent_id, child.status.not_in(list(TERMINAL)))
        .exists()
    )


def job_parts(session: Session, *, job_id: int) -> Sequence[Job]:
    """A parent's parts, in order."""
    return session.scalars(
        select(Job).where(Job.parent_id == job_id).order_by(Job.part_index)
    ).all()


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
    if parent is None or parent.status != JobStatus.RUNNING or parent.attempt != attempt:
        raise LostJob(f"job {parent_id} attempt {attempt} is no longer running here")
    existing = job_parts(session, job_id=parent_id)
    if existing:
        return existing
    session.execute(
        update(Job)
        .where(_owned(parent_id, attempt))
        .values(params={**(parent.params or {}), "plan": plan}, part_count=len(parts))
        .execution_options(synchronize_session=False)
    )
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
    detached = session.execute(
        update(Job)
        .where(_owned(job_id, attempt), Job.cancel_requested.is_(False))
        .values(heartbeat_at=None, worker=None)
        .execution_options(synchronize_session=False)
    )
    if detached.rowcount == 1:
        return True
    owned = session.scalar(select(Job.id).where(_owned(job_id, attempt)))
    if owned is None:
        raise LostJob(f"job {job_id} attempt {attempt} is no longer running here")
    return False


def take_over_parent(session: Session, *, job_id: int, worker: str, device: str) -> Job | None:
    """Take a detached parent whose parts have all finished, to finish it (its attempt
    stays: this continues the run that detached). Returns None unless this caller got it:
    many may try at once, one conditional update lets exactly one through."""
    taken = session.execute(
        update(Job)
        .where(Job.id == job_id, _is_waiting_parent(), ~_parts_unfinished(job_id))
        .values(heartbeat_at=utcnow(), worker=worker, device=device)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def part_label(job: Job) -> str:
    """How messages name a part: `part 2 of 5 (train-00001-of-00004.arrow)`."""
    shard = (job.params or {}).get("shard")
    where = f" ({shard})" if shard else ""
    return f"part {(job.part_index or 0) + 1} of {job.part_count}{where}"


def _stop_parts(session: Session, *, parent_id: int, reason: str) -> None:
    """Queued parts end cancelled now; running ones are asked to stop at their next check."""
    session.execute(
        update(Job)
        .where(Job.parent_id == parent_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=utcnow(),
            error=reason,
            error_type="Cancelled",
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.parent_id == parent_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )


def _end_parent_for_part(
    session: Session, part: Job, *, status: JobStatus, error: str | None
) -> None:
    """A part that failed (after its attempts) fails its dataset with its reason; one that
    was cancelled cancels it. The other parts stop: the dataset cannot be made now."""
    if status == JobStatus.FAILED:
        message = f"{part_label(part)} failed: {error}"
        error_type = "PartFailed"
    else:
        message = f"{part_label(part)} was cancelled"
        error_type = "Cancelled"
    ended = session.execute(
        update(Job)
        .where(Job.id == part.parent_id, Job.status.not_in(list(TERMINAL)))
        .values(status=status, finished_at=utcnow(), error=message, error_type=error_type)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 1:
        _settle_product(session, job_id=part.parent_id, status=status, error=message)
        _stop_parts(session, parent_id=part.parent_id, reason=f"stopped: {message}")


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
                    ~_parts_unfinished(job_id),
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


def beat(session: Session, *, job_id: int, attempt: int) -> bool:
    """Stamp the heartbeat. Returns whether a cancel was asked for; raises LostJob."""
    stamped = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if stamped.rowcount != 1:
        raise LostJob(f"job {job_id} attempt {attempt} is no longer running here")
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
    updated = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if updated.rowcount != 1:
        raise LostJob(f"job {job_id} attempt {attempt} is no longer running here")
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
    ended = session.execute(
        update(Job)
        .where(_owned(job_id, attempt))
        .values(status=status, finished_at=utcnow(), error=error, error_type=error_type)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount != 1:
        raise LostJob(f"job {job_id} attempt {attempt} is no longer running here")
    _settle_product(session, job_id=job_id, status=status, error=error)


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


def _settle_product(session: Session, *, job_id: int, status: JobStatus, error: str | None) -> None:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return
    if job.kind == JobKind.PREPARE_PART:
        if status != JobStatus.SUCCEEDED and job.parent_id is not None:
            _end_parent_for_part(session, job, status=status, error=error)
        return
    if job.kind == JobKind.PREPARE and job.dataset_id is not None:
        session.execute(
            update(Dataset)
            .where(Dataset.id == job.dataset_id)
            .values(status=PRODUCT_STATUS[status], error=error, updated_at=utcnow())
        )
        if job.part_count is not None and status != JobStatus.SUCCEEDED:
            _stop_parts(session, parent_id=job_id, reason=f"stopped: the dataset's job {status}")
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
        (_is_waiting_parent(), "cancelled while its parts ran"),
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
            _settle_product(session, job_id=job_id, status=JobStatus.CANCELLED, error=message)
            break
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
    _stop_parts(session, parent_id=job_id, reason="cancelled with its dataset")
    return session.get(Job, job_id, populate_existing=True)


@dataclass
class Recovery:
    requeued: list[Job]
    failed: list[Job]
    # Queued jobs sent again because their message may be lost (`resend_queued_jobs`).
    resent: list[Job] = field(default_factory=list)


def recover_stale_jobs(
    session: Session, *, stale_before: datetime, max_attempts: int, timeout_s: float
) -> Recovery:
    """Running jobs whose heartbeat is older than `stale_before` lost their worker.

    Each goes back to `queued` (the caller sends it again after committing), or, once it
    has had `max_attempts` runs, ends `failed` with the reason. A job that was asked to
    cancel ends `cancelled` instead of running again. Two recoverers racing are fine: each
    update is conditional on the state it read, so a job moves once.
    """
    stale = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < stale_before)
    ).all()
    outcome = Recovery(requeued=[], failed=[])
    for job in stale:
        same_run = and_(
            Job.id == job.id,
            Job.status == JobStatus.RUNNING,
            Job.attempt == job.attempt,
            Job.heartbeat_at < stale_before,
        )
        silent = f"its worker {job.worker} sent no heartbeat for {timeout_s:g}s"
        if job.cancel_requested or job.attempt >= max_attempts:
            status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.FAILED
            error = (
                f"cancelled: {silent} after the cancel request"
                if job.cancel_requested
                else f"gave up after {job.attempt} of {max_attempts} attempts: {silent}"
            )
            error_type = "Cancelled" if job.cancel_requested else "WorkerLost"
            moved = session.execute(
                update(Job)
                .where(same_run)
                .values(status=status, finished_at=utcnow(), error=error, error_type=error_type)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount == 1:
                _settle_product(session, job_id=job.id, status=status, error=error)
                outcome.failed.append(job)
            continue
        moved = session.execute(
            update(Job)
            .where(same_run)
            .values(
                status=JobStatus.QUEUED,
                heartbeat_at=None,
                # The caller sends it right after the commit.
                sends=Job.sends + 1,
                sent_at=utcnow(),
                resend_at=None,
                error=f"attempt {job.attempt} lost: {silent}; queued again",
                error_type="WorkerLost",
            )
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:
            outcome.requeued.append(session.get(Job, job.id, populate_existing=True))
    outcome.requeued.extend(_wake_forgotten_parents(session, stale_before=stale_before))
    return outcome


def resend_queued_jobs(
    session: Session, *, first_wait_s: float, max_wait_s: float, limit: int = 100
) -> list[Job]:
    """Queued jobs that nobody claimed within their wait: their message may be lost.

    A message can vanish without a trace: a broker that restarts without saving, or a
    process that dies between committing a job and sending it. The claim is conditional, so
    a second message for a job whose first one still waits is harmless; each resend doubles
    the wait before the next (up to `max_wait_s`), so a job that merely waits its turn
    behind a long run collects a handful of duplicates, not one per sweep.

    Returns the jobs to send (the caller sends them after committing). Conditional on the
    number of sends read, so two sweepers never both send the same round.
    """
    now = utcnow()
    due = session.scalars(
        select(Job)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(
                Job.resend_at <= now,
                and_(
                    Job.resend_at.is_(None),
                    Job.sent_at <= now - timedelta(seconds=first_wait_s),
                ),
            ),
        )
        .order_by(Job.id)
        .limit(limit)
    ).all()
    resent = []
    for job in due:
        wait = min(first_wait_s * 2 ** min(job.sends, 30), max_wait_s)
        moved = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.QUEUED, Job.sends == job.sends)
            .values(sends=Job.sends + 1, sent_at=now, resend_at=now + timedelta(seconds=wait))
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:
            resent.append(session.get(Job, job.id, populate_existing=True))
    return resent


def _wake_forgotten_parents(session: Session, *, stale_before: datetime) -> list[Job]:
    """Detached parents whose parts all finished before `stale_before` and that nobody took
    over (the worker of the last part died between its commit and the take-over): queued
    again, so that a worker finishes them."""
    child = aliased(Job)
    recent_or_running = (
        select(child.id)
        .where(
            child.parent_id == Job.id,
            or_(child.status.not_in(list(TERMINAL)), child.finished_at >= stale_before),
        )
        .exists()
    )
    forgotten = session.scalars(select(Job).where(_is_waiting_parent(), ~recent_or_running)).all()
    woken = []
    for job in forgotten:
        moved = session.execute(
            update(Job)
            .where(Job.id == job.id, _is_waiting_parent())
            .values(status=JobStatus.QUEUED)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:
            woken.append(session.get(Job, job.id, populate_existing=True))
    return woken


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
        _settle_product(session, job_id=job_id, status=JobStatus.FAILED, error=error)
