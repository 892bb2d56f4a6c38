"""A dataset prepared in parts: a parent job with one child job per part.

The parent's run plans the parts, creates them and then detaches: it stays `running` with
no heartbeat (no process runs it; its parts do the work and are recovered one by one).
When the last part has finished, whoever sees it first takes the parent over
(`service.db.jobs.take_over_parent`) to check the parts and write the dataset's metadata.
A failed part fails the parent, and cancelling the parent cancels its parts.

This module says what a parent and its parts are and how an end on one side reaches the
other; the job life (`service.db.jobs`) calls it when a job ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session, aliased

from service.db.models import Job, utcnow
from service.queue import TERMINAL, JobStatus


def is_waiting_parent():
    """A parent whose run has handed the work to its parts: running, nobody beating."""
    return and_(
        Job.status == JobStatus.RUNNING,
        Job.heartbeat_at.is_(None),
        Job.part_count.is_not(None),
        Job.parent_id.is_(None),
    )


def parts_unfinished(parent_id):
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


def part_label(job: Job) -> str:
    """How messages name a part: `part 2 of 5 (train-00001-of-00004.arrow)`."""
    shard = (job.params or {}).get("shard")
    where = f" ({shard})" if shard else ""
    return f"part {(job.part_index or 0) + 1} of {job.part_count}{where}"


def stop_parts(session: Session, *, parent_id: int, reason: str) -> None:
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


def end_parent_for_part(
    session: Session, part: Job, *, status: JobStatus, error: str | None
) -> str | None:
    """A part that failed (after its attempts) fails its dataset's job with its reason; one
    that was cancelled cancels it. Returns the parent's message when this ended it (the
    caller then settles the dataset and stops the other parts), else None."""
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
    return message if ended.rowcount == 1 else None
