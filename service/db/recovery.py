"""Recovery sweeps: jobs whose worker died, queued jobs whose message may be lost, and
detached parents that nobody took over. Each update is conditional on the state it read,
so two sweepers racing move a job once; the caller sends the messages after committing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, aliased

from service.db.jobs import settle_product
from service.db.models import Job, utcnow
from service.db.parts import is_waiting_parent
from service.queue import TERMINAL, JobStatus


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
