"""Recovery sweeps: jobs whose worker died, queued jobs whose message may be lost, and
detached parents that nobody took over. Each update is conditional on the state it read,
so two sweepers racing move a job once; the caller sends the messages after committing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, aliased

from service.db.jobs import settle_product
from service.db.models import Dataset, Job, utcnow
from service.db.parts import is_waiting_parent
from service.queue import TERMINAL, JobStatus, ProductStatus


@dataclass
class Recovery:
    requeued: list[Job]
    failed: list[Job]
    # Queued jobs sent again because their message may be lost (`queued_jobs_to_send`).
    resent: list[Job] = field(default_factory=list)
    # Failed or cancelled datasets whose files were removed (`datasets_to_clean`).
    cleaned: list[int] = field(default_factory=list)


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
                settle_product(session, job_id=job.id, status=status, error=error)
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


def queued_jobs_to_send(
    session: Session,
    *,
    first_wait_s: float,
    lost_before: datetime | None = None,
    limit: int = 100,
) -> Sequence[Job]:
    """Queued jobs whose message may be lost: nobody claimed them within their wait, or
    (`lost_before`) their last message went out before the broker was found to have
    forgotten its messages.

    A message can vanish without a trace: a broker that restarts without saving, or a
    process that dies between committing a job and sending it. The claim is conditional, so
    a second message for a job whose first one still waits is harmless; each send doubles
    the wait before the next (up to the maximum, see `count_send`), so a job that merely
    waits its turn behind a long run collects a handful of duplicates, not one per sweep.
    """
    now = utcnow()
    due = or_(
        Job.resend_at <= now,
        and_(Job.resend_at.is_(None), Job.sent_at <= now - timedelta(seconds=first_wait_s)),
    )
    if lost_before is not None:
        due = or_(due, Job.sent_at < lost_before)
    return session.scalars(
        select(Job).where(Job.status == JobStatus.QUEUED, due).order_by(Job.id).limit(limit)
    ).all()


def count_send(session: Session, *, job: Job, first_wait_s: float, max_wait_s: float) -> Job | None:
    """Count one more message for a job `queued_jobs_to_send` found, and set its next wait;
    the caller sends the message before committing, so a send that fails counts nothing.
    Returns None when another sweeper counted this round first (conditional on the number
    of sends read, and the row stays locked until that sweeper commits): it sends it."""
    now = utcnow()
    wait = min(first_wait_s * 2 ** min(job.sends, 30), max_wait_s)
    counted = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.QUEUED, Job.sends == job.sends)
        .values(sends=Job.sends + 1, sent_at=now, resend_at=now + timedelta(seconds=wait))
        .execution_options(synchronize_session=False)
    )
    if counted.rowcount != 1:
        return None
    return session.get(Job, job.id, populate_existing=True)


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
    forgotten = session.scalars(select(Job).where(is_waiting_parent(), ~recent_or_running)).all()
    woken = []
    for job in forgotten:
        moved = session.execute(
            update(Job)
            .where(Job.id == job.id, is_waiting_parent())
            .values(status=JobStatus.QUEUED)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:
            woken.append(session.get(Job, job.id, populate_existing=True))
    return woken


def datasets_to_clean(session: Session, *, dataset_ids: Iterable[int]) -> list[int]:
    """Of these datasets (those with files), the ones that failed or were cancelled and that
    no job of theirs still works on (a part asked to stop may still be writing its shard),
    and those whose row is gone (deleted, the removal of their files cut short). Their
    files are only taking space; nothing will ever read them."""
    ids = list(dataset_ids)
    if not ids:
        return []
    working = select(Job.id).where(Job.dataset_id == Dataset.id, Job.status.not_in(list(TERMINAL)))
    finished = session.scalars(
        select(Dataset.id).where(
            Dataset.id.in_(ids),
            Dataset.status.in_([ProductStatus.FAILED, ProductStatus.CANCELLED]),
            ~working.exists(),
        )
    )
    recorded = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(ids))))
    return sorted({*finished, *(i for i in ids if i not in recorded)})
