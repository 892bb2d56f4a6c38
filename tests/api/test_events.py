"""api.events.read_patiently: the one read loop behind the job event and log streams,
patient with a database that hiccups but not forever."""

from __future__ import annotations

import asyncio

from api.events import MAX_READ_FAILURES, read_patiently


def test_a_read_is_tried_again_until_it_answers_then_given_up_after_the_bound():
    calls = []

    def flaky(answer):
        calls.append(answer)
        if len(calls) < 3:
            raise ConnectionError("the database restarts")
        return answer

    got = asyncio.run(read_patiently(flaky, "state", job_id=1, poll_s=0, what="events"))
    assert got == "state" and len(calls) == 3

    def down():
        calls.append(None)
        raise ConnectionError("the database is away")

    calls.clear()
    assert asyncio.run(read_patiently(down, job_id=1, poll_s=0, what="logs")) is None
    assert len(calls) == MAX_READ_FAILURES
