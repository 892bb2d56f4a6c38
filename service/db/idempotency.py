"""Answers remembered under an Idempotency-Key: a client that lost the response to a POST
sends it again with the same key and gets the same answer, not a second job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.models import IdempotencyKey, utcnow


def find_key(session: Session, *, route: str, key: str) -> IdempotencyKey | None:
    """The live (unexpired) record of this key on this route."""
    return session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.route == route,
            IdempotencyKey.key == key,
            IdempotencyKey.expires_at > utcnow(),
        )
    )


def remember_key(
    session: Session,
    *,
    route: str,
    key: str,
    request_hash: str,
    status_code: int,
    response: dict[str, Any],
    expires_at: datetime,
) -> None:
    """Record the answer in the caller's transaction, beside the rows it describes. Two
    requests racing with one key: the second commit breaks the unique constraint."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.route == route,
            IdempotencyKey.key == key,
            IdempotencyKey.expires_at <= utcnow(),
        )
    )
    session.add(
        IdempotencyKey(
            route=route,
            key=key,
            request_hash=request_hash,
            status_code=status_code,
            response=response,
            expires_at=expires_at,
        )
    )
    session.flush()


def forget_key(session: Session, *, route: str, key: str) -> None:
    """The request failed after all (its job could not be sent): a retry must run it anew."""
    session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.route == route, IdempotencyKey.key == key)
    )


def purge_expired_keys(session: Session) -> int:
    return session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow())
    ).rowcount
