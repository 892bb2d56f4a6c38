"""GET /jobs/{id}/logs?follow=true: a job's log lines as Server-Sent Events while it runs.

Workers write a job's lines to the database (workers/joblog.py), so the stream reads them
there every `GISTNET_EVENTS_POLL_S`, whichever machine runs the job:

    event: log   data: one line, as GET /jobs/{id}/logs lists them   id: the line's id
    event: end   data: {"status": ...} once the job is finished; the stream then closes

The lines that end a run are committed with the job's final state, so a stream that sees
the job finished has sent every line before `end`. A reconnecting EventSource sends the
last id it saw (`Last-Event-ID`) and gets only the lines after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from api.events import KEEPALIVE_S, read_patiently, sse, unreadable
from api.schemas import JobLogLine
from service.db.jobs import get_job
from service.db.logs import job_logs
from service.queue import TERMINAL

# Lines read per look at the database: a job that logged a great deal is sent in pieces.
READ_LINES = 1000


def log_lines(session, *, job_id: int, limit: int, after_id: int | None) -> list[dict[str, Any]]:
    return [
        JobLogLine.model_validate(line).model_dump(mode="json")
        for line in job_logs(session, job_id=job_id, limit=limit, after_id=after_id)
    ]


def _read(sessionmaker, job_id: int, tail: int, after_id: int | None):
    """The job's status, then its lines: a finished job's last lines were committed with
    its status, so reading the status first never misses them."""
    with sessionmaker() as session:
        job = get_job(session, job_id=job_id)
        if job is None:
            return None, []
        limit = READ_LINES if after_id is not None else tail
        return job.status, log_lines(session, job_id=job_id, limit=limit, after_id=after_id)


async def job_log_stream(
    sessionmaker, *, job_id: int, tail: int, after_id: int | None, poll_s: float
) -> AsyncIterator[str]:
    last_sent = time.monotonic()
    while True:
        read = await read_patiently(
            _read, sessionmaker, job_id, tail, after_id, job_id=job_id, poll_s=poll_s, what="logs"
        )
        if read is None:
            yield unreadable(job_id)
            return
        status, lines = read
        if status is None:
            yield sse("error", {"detail": f"job {job_id} no longer exists"})
            return
        for line in lines:
            yield sse("log", line, event_id=line["id"])
        if lines:
            after_id = lines[-1]["id"]
            last_sent = time.monotonic()
        elif after_id is None:
            after_id = 0  # no line yet: from now on, every line is news
        if status in TERMINAL and len(lines) < READ_LINES:
            yield sse("end", {"status": status})
            return
        if time.monotonic() - last_sent >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if len(lines) < READ_LINES:
            await asyncio.sleep(poll_s)
