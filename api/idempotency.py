"""`Idempotency-Key` on POST /datasets, /train and /evaluations.

A client whose response was lost (a timeout, the API killed mid-request) cannot know
whether its job was made. Sent again with the same key and body, the request gets the
first answer again and makes nothing new; the same key with another body is a mistake
(422). The answer is written in the same transaction as the rows it describes, so it
exists exactly when they do; if the job's message then never reaches the broker, the
sweep sends it (GISTNET_QUEUED_RESEND_S). Keys live GISTNET_IDEMPOTENCY_TTL_S.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.validation import RequestProblem
from service.db.idempotency import find_key, forget_key, remember_key
from service.db.models import IdempotencyKey, utcnow

KEY_LENGTH = IdempotencyKey.__table__.c.key.type.length
KEY_PATTERN = r"^[!-~]+$"  # visible ASCII: a header value that survives any proxy

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_LENGTH,
        pattern=KEY_PATTERN,
        description="Any unique string (a UUID): a retry with the same key and body gets the "
        "first answer again instead of making a second job.",
    ),
]


def check_key(key: str | None) -> str | None:
    """The header's checks, for a route that reads its headers itself (multipart uploads)."""
    if key is not None and not (len(key) <= KEY_LENGTH and re.fullmatch(KEY_PATTERN, key)):
        raise RequestProblem(
            f"Idempotency-Key: 1 to {KEY_LENGTH} visible ASCII characters (a UUID, say)"
        )
    return key


@dataclass
class Idempotency:
    route: str
    key: str | None
    request_hash: str
    ttl_s: float

    @classmethod
    def of(cls, *, route: str, key: str | None, body: BaseModel, ttl_s: float) -> Idempotency:
        # The body as validated, so spelling out a default is the same request as leaving it.
        canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return cls(route=route, key=key, request_hash=digest, ttl_s=ttl_s)

    @classmethod
    def of_digest(
        cls, *, route: str, key: str | None, parts: list[str], ttl_s: float
    ) -> Idempotency:
        """For a request that is not one JSON body: what makes it the same request."""
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return cls(route=route, key=key, request_hash=digest, ttl_s=ttl_s)

    def replay(self, session: Session) -> JSONResponse | None:
        """The first answer, if this key was seen; 422 if it came with another body."""
        if self.key is None:
            return None
        record = find_key(session, route=self.route, key=self.key)
        seen = (
            None if record is None else (record.request_hash, record.status_code, record.response)
        )
        # End the read: on SQLite a transaction holds the write lock, and the checks that
        # follow (loading a tokenizer) take a while.
        session.rollback()
        if seen is None:
            return None
        request_hash, status_code, response = seen
        if request_hash != self.request_hash:
            raise RequestProblem(
                f"Idempotency-Key {self.key!r} was sent before with a different {self.route} "
                f"body; use a new key for a new request"
            )
        return JSONResponse(
            response["body"],
            status_code=status_code,
            headers={**response.get("headers", {}), "Idempotent-Replayed": "true"},
        )

    def commit(
        self, session: Session, *, status_code: int, body: BaseModel, location: str
    ) -> JSONResponse | None:
        """Commit the request's rows together with its answer. If a request with the same
        key committed first (they raced), nothing of this one is kept and the first one's
        answer is returned; else None."""
        if self.key is None:
            session.commit()
            return None
        try:
            remember_key(
                session,
                route=self.route,
                key=self.key,
                request_hash=self.request_hash,
                status_code=status_code,
                response={"body": body.model_dump(mode="json"), "headers": {"Location": location}},
                expires_at=utcnow() + timedelta(seconds=self.ttl_s),
            )
            session.commit()
        except IntegrityError:
            session.rollback()
            earlier = self.replay(session)
            if earlier is None:
                raise
            return earlier
        return None

    def forget(self, session: Session) -> None:
        """The request failed after its commit (the broker refused the job): a retry with
        this key must run it anew, not be told about a failed job."""
        if self.key is not None:
            forget_key(session, route=self.route, key=self.key)
            session.commit()
