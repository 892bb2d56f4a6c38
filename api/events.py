"""GET /jobs/{id}/events: a job's state and new loss-curve points as Server-Sent Events.

The stream reads the job's row every `GISTNET_EVENTS_POLL_S` (workers write progress to
the database, never to the API, so the database is where news appears) and sends only
what changed:

    event: state     data: the job, as GET /jobs/{id} returns it
    event: metrics   data: {"data": [points after the last one sent]}   id: last step
    event: end       data: the final job; the stream then closes

A reconnecting EventSource sends the last id it saw (`Last-Event-ID`), so it gets only
the points it lacks; scripts can ask for the same with `?after_step=N`. A resumed job
rewrites the points after its resume step with the same values (resuming is
deterministic), so points already sent stay right.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool

from api.schemas import MetricPoint
from api.views import job_public
from service.db.jobs import get_job
from service.db.records import job_metrics
from service.queue import TERMINAL

log = logging.getLogger(__name__)

# A comment line this often keeps proxies and load balancers from closing a quiet stream.
KEEPALIVE_S = 15.0
# Reads of the job that may fail in a row before the stream gives up (the client reconnects).
MAX_READ_FAILURES = 10


def sse(event: str, data: Any, *, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


async def read_patiently(read, *args: Any, job_id: int, poll_s: float, what: str) -> Any:
    """`read(*args)` on a thread, tried again every `poll_s` while the database hiccups:
    its answer, or None after MAX_READ_FAILURES failures in a row (the stream then says
    so, and the client reconnects)."""
    for attempt in range(1, MAX_READ_FAILURES + 1):
        try:
            return await run_in_threadpool(read, *args)
        except Exception:
            log.exception("%s of job %s could not read it", what, job_id)
            if attempt < MAX_READ_FAILURES:
                await asyncio.sleep(poll_s)
    return None


def unreadable(job_id: int) -> str:
    return sse("error", {"detail": f"job {job_id} cannot be read now; reconnect"})


def _read(sessionmaker, job_id: int, after_step: int | None):
    """The job as JSON and its points after `after_step`, from one short session."""
    with sessionmaker() as session:
        job = get_job(session, job_id=job_id)
        if job is None:
            return None, []
        state = job_public(job).model_dump(mode="json")
        points = [
            MetricPoint.model_validate(m).model_dump(mode="json")
            for m in job_metrics(session, job_id=job_id, after_step=after_step)
        ]
        return state, points


def _news(state: dict[str, Any]) -> dict[str, Any]:
    # The heartbeat stamp changes every few seconds and tells a viewer nothing new.
    return {k: v for k, v in state.items() if k != "heartbeat_at"}


async def job_event_stream(
    sessionmaker, *, job_id: int, after_step: int | None, poll_s: float
) -> AsyncIterator[str]:
    last_news: dict[str, Any] | None = None
    last_sent = time.monotonic()
    while True:
        read = await read_patiently(
            _read, sessionmaker, job_id, after_step, job_id=job_id, poll_s=poll_s, what="events"
        )
        if read is None:
            yield unreadable(job_id)
            return
        state, points = read
        if state is None:
            yield sse("error", {"detail": f"job {job_id} no longer exists"})
            return
        if _news(state) != last_news:
            last_news = _news(state)
            yield sse("state", state)
            last_sent = time.monotonic()
        if points:
            after_step = points[-1]["step"]
            yield sse("metrics", {"data": points}, event_id=after_step)
            last_sent = time.monotonic()
        if state["status"] in TERMINAL:
            yield sse("end", state)
            return
        if time.monotonic() - last_sent >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)
