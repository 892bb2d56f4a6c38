"""The job state machine in the database, on SQLite and PostgreSQL: what keeps a job from
running twice, from being lost with its worker, or from being overwritten by a dead run."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from gistnet.train_request import TrainSettings
from service.db.engine import session_scope
from service.db.jobs import (
    LostJob,
    beat,
    claim_job,
    finish_job,
    record_progress,
    request_cancel,
)
from service.db.models import Dataset, Job, utcnow
from service.db.records import create_dataset, create_training_job, job_metrics
from service.db.recovery import count_send, queued_jobs_to_send, recover_stale_jobs

LONG_AGO = timedelta(hours=1)


def _claim(url, job_id, worker="w1", *, stale_after=60.0, max_attempts=3):
    with session_scope(url) as session:
        job = claim_job(
            session,
            job_id=job_id,
            worker=worker,
            device="cpu",
            stale_before=utcnow() - timedelta(seconds=stale_after),
            max_attempts=max_attempts,
        )
        return None if job is None else (job.id, job.attempt, job.worker)


def _training_job(url) -> int:
    with session_scope(url) as session:
        dataset, _ = create_dataset(session, name="d", config={"tokenizer": "t"})
        return create_training_job(
            session, dataset_id=dataset.id, settings=TrainSettings(split="train").to_dict()
        ).id


def _age_heartbeat(url, job_id, by=LONG_AGO):
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        job.heartbeat_at = utcnow() - by


def _recover(url, max_attempts=3):
    with session_scope(url) as session:
        outcome = recover_stale_jobs(
            session,
            stale_before=utcnow() - timedelta(seconds=60),
            max_attempts=max_attempts,
            timeout_s=60,
        )
        return [j.id for j in outcome.requeued], [j.id for j in outcome.failed]


def test_a_job_is_claimed_once_and_a_redelivered_message_finds_nothing_to_do(database_url):
    job_id = _training_job(database_url)
    assert _claim(database_url, job_id, "w1") == (job_id, 1, "w1")
    assert _claim(database_url, job_id, "w2") is None  # live heartbeat: leave it alone
    with session_scope(database_url) as session:
        finish_job(session, job_id=job_id, attempt=1, status="succeeded")
    assert _claim(database_url, job_id, "w3") is None  # finished: a duplicate does nothing


def test_racing_workers_claim_a_job_exactly_once(database_url):
    job_id = _training_job(database_url)
    winners, start = [], threading.Barrier(4)

    def contend(name):
        start.wait()
        if _claim(database_url, job_id, name) is not None:
            winners.append(name)

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_a_silent_job_is_queued_again_and_its_next_run_is_attempt_two(database_url):
    job_id = _training_job(database_url)
    _claim(database_url, job_id, "dead-worker")
    assert _recover(database_url) == ([], [])  # still beating: nothing to do
    _age_heartbeat(database_url, job_id)
    assert _recover(database_url) == ([job_id], [])
    assert _recover(database_url) == ([], [])  # moved once, even if swept twice
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "queued" and "no heartbeat" in job.error
    assert _claim(database_url, job_id, "new-worker") == (job_id, 2, "new-worker")


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(database_url):
    with session_scope(database_url) as session:
        dataset, job = create_dataset(session, name="d", config={"tokenizer": "t"})
        dataset_id, job_id = dataset.id, job.id
    for attempt in (1, 2):
        assert _claim(database_url, job_id, f"w{attempt}", max_attempts=2)[1] == attempt
        _age_heartbeat(database_url, job_id)
        requeued, failed = _recover(database_url, max_attempts=2)
    assert (requeued, failed) == ([], [job_id])
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and job.error_type == "WorkerLost"
        assert "gave up after 2 of 2 attempts" in job.error
        assert session.get(Dataset, dataset_id).status == "failed"


def test_a_stale_run_that_comes_back_cannot_overwrite_the_new_run(database_url):
    job_id = _training_job(database_url)
    _claim(database_url, job_id, "slow-worker")
    _age_heartbeat(database_url, job_id)
    _recover(database_url)
    _claim(database_url, job_id, "new-worker")
    with session_scope(database_url) as session, pytest.raises(LostJob):
        beat(session, job_id=job_id, attempt=1)
    with session_scope(database_url) as session, pytest.raises(LostJob):
        record_progress(session, job_id=job_id, attempt=1, step=3)
    with pytest.raises(LostJob), session_scope(database_url) as session:
        finish_job(session, job_id=job_id, attempt=1, status="failed", error="late")
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.worker, job.step) == ("running", 2, "new-worker", None)


def test_cancel_of_a_queued_job_is_immediate_and_of_a_running_one_is_a_request(database_url):
    with session_scope(database_url) as session:
        dataset, queued = create_dataset(session, name="d", config={"tokenizer": "t"})
        dataset_id, queued_id = dataset.id, queued.id
    running_id = _training_job(database_url)
    _claim(database_url, running_id)
    with session_scope(database_url) as session:
        assert request_cancel(session, job_id=queued_id).status == "cancelled"
        assert session.get(Dataset, dataset_id).status == "cancelled"
        job = request_cancel(session, job_id=running_id)
        assert job.status == "running" and job.cancel_requested
    with session_scope(database_url) as session:
        assert beat(session, job_id=running_id, attempt=1) is True  # the run learns of it
    assert _claim(database_url, queued_id) is None


def test_a_resumed_run_replaces_the_points_after_its_checkpoint(database_url):
    job_id = _training_job(database_url)
    _claim(database_url, job_id)
    points = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)]
    with session_scope(database_url) as session:
        record_progress(session, job_id=job_id, attempt=1, step=7, metrics=points)
    _age_heartbeat(database_url, job_id)
    _recover(database_url)
    _claim(database_url, job_id)
    resumed = [{"step": s, "loss": 2.0} for s in range(6, 9)]  # checkpoint was at step 5
    with session_scope(database_url) as session:
        record_progress(
            session, job_id=job_id, attempt=2, step=8, metrics=resumed, replace_from_step=6
        )
    with session_scope(database_url) as session:
        curve = [(m.step, m.attempt) for m in job_metrics(session, job_id=job_id)]
    assert curve == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2), (8, 2)]


def _age_send(url, job_id, by=LONG_AGO):
    """As if the job's last message went out `by` ago (and nobody has claimed it since)."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        job.sent_at = utcnow() - by
        if job.resend_at is not None:
            job.resend_at = job.resend_at - by


def _resend(url, first_wait_s=60.0, max_wait_s=600.0):
    """One sweep's round, as the workers' sweep counts it (the send itself left out)."""
    with session_scope(url) as session:
        due = queued_jobs_to_send(session, first_wait_s=first_wait_s)
        counted = [
            count_send(session, job=job, first_wait_s=first_wait_s, max_wait_s=max_wait_s)
            for job in due
        ]
        return [(j.id, j.sends) for j in counted if j is not None]


def test_a_queued_job_whose_message_was_lost_is_sent_again_with_a_growing_wait(database_url):
    # Committed, never claimed: its message vanished (a broker restarted without saving, or
    # the API died between the commit and the send).
    job_id = _training_job(database_url)
    assert _resend(database_url) == []  # within the first wait: its message may be queued
    _age_send(database_url, job_id, timedelta(seconds=61))
    assert _resend(database_url) == [(job_id, 2)]
    assert _resend(database_url) == []  # sent once per round, however often swept
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        wait = (job.resend_at - job.sent_at).total_seconds()
    assert wait == pytest.approx(120)  # the second wait is twice the first
    _age_send(database_url, job_id, timedelta(seconds=121))
    assert _resend(database_url) == [(job_id, 3)]
    for _ in range(6):  # ... and never more than max_wait_s
        _age_send(database_url, job_id, LONG_AGO)
        _resend(database_url)
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert (job.resend_at - job.sent_at).total_seconds() == pytest.approx(600)
    # Once a worker holds it, nothing is sent: a running job is the heartbeat's business.
    assert _claim(database_url, job_id) is not None
    _age_send(database_url, job_id, LONG_AGO)
    assert _resend(database_url) == []


def test_sweepers_racing_send_a_lost_job_once(database_url):
    job_id = _training_job(database_url)
    _age_send(database_url, job_id)
    sent, start = [], threading.Barrier(4)

    def sweep():
        start.wait()
        sent.extend(_resend(database_url))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sent == [(job_id, 2)]


def test_a_requeued_job_counts_its_new_message(database_url):
    job_id = _training_job(database_url)
    _claim(database_url, job_id)
    _age_heartbeat(database_url, job_id)
    _recover(database_url)
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.sends, job.resend_at) == ("queued", 2, None)
    assert _resend(database_url) == []  # the recovery's message is fresh
