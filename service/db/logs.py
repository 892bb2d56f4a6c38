"""A job's log lines: written by the worker that runs it, read by GET /jobs/{id}/logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from service.db.models import JobLog


def add_job_logs(session: Session, *, rows: list[dict[str, Any]]) -> None:
    """Lines as JobLog's columns (job_id, attempt, logged_at, level, logger, worker, message)."""
    if rows:
        session.execute(insert(JobLog), rows)


def job_logs(
    session: Session, *, job_id: int, limit: int, after_id: int | None = None
) -> Sequence[JobLog]:
    """The job's last `limit` lines, oldest first; with `after_id`, the first `limit` lines
    after that one (what a follower has not seen yet)."""
    query = select(JobLog).where(JobLog.job_id == job_id)
    if after_id is not None:
        return session.scalars(
            query.where(JobLog.id > after_id).order_by(JobLog.id).limit(limit)
        ).all()
    newest = session.scalars(query.order_by(JobLog.id.desc()).limit(limit)).all()
    return newest[::-1]


def count_job_logs(session: Session, *, job_id: int) -> int:
    return session.scalar(select(func.count()).where(JobLog.job_id == job_id)) or 0
