"""Recovery that does not wait: a broker that lost its messages, a sweep while it is away,
a database away at the moment a run ends, and the files a failed dataset left behind.

Redis and PostgreSQL here are servers of the test's own (tests/private_servers.py) where
the test stops or restarts them; the others use the session's PostgreSQL database.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from service.db.engine import dispose_engines, session_scope
from service.db.jobs import claim_job, create_parts, finish_job, record_progress
from service.db.models import Dataset, Job, utcnow
from service.db.records import create_dataset
from service.queue import JobStatus, broker_kept_its_messages, celery_client, leave_mark
from tests.private_servers import private_postgres, private_redis
from tests.service_stack import (
    dataset_body,
    make_stack,
    postgres_database,
    start_worker,
    wait_for_job,
    wait_until,
)
from workers.recovery import sweep
from workers.runner import Outcome, run_job

pytestmark = [pytest.mark.services, pytest.mark.slow]

# The shipped defaults for queued jobs: the first resend only after five minutes.
DEFAULT_RESEND = {"queued_resend_s": 300.0, "queued_resend_max_s": 3600.0}


def _queued_job(settings) -> int:
    """A dataset's job, committed and queued (its message is the test's business)."""
    with session_scope(settings.database_url) as session:
        return create_dataset(session, name="d", config={})[1].id


def _sends(settings, job_ids) -> list[tuple[int, float | None]]:
    with session_scope(settings.database_url) as session:
        jobs = [session.get(Job, job_id) for job_id in job_ids]
        return [
            (job.sends, job.resend_at and (job.resend_at - job.sent_at).total_seconds())
            for job in jobs
        ]


def test_a_queued_job_runs_at_once_when_redis_comes_back_without_its_message(
    tmp_path, teacher, documents
):
    with private_redis() as redis, postgres_database() as database_url:
        stack = make_stack(
            tmp_path, database_url=database_url, broker_url=redis.url, **DEFAULT_RESEND
        )
        # A worker of the `train` queue only: it sweeps, but never takes the dataset's job.
        trainer = start_worker(stack, name="trainer", queues="train")
        preparer = None
        try:
            wait_until(
                lambda: broker_kept_its_messages(celery_client(stack.settings)),
                timeout=60,
                what="the sweep's mark in the broker",
            )
            with TestClient(create_app(stack.settings)) as client:
                job_id = client.post("/datasets", json=dataset_body(teacher, documents)).json()[
                    "job_id"
                ]
                redis.restart()  # SHUTDOWN NOSAVE: the job's message is gone
                preparer = start_worker(stack, name="preparer", queues="prep")
                # Well within the five minutes the wait for an unclaimed job would take.
                job = wait_for_job(client, job_id, timeout=60)
            assert job["status"] == "succeeded", job
            assert (job["attempt"], job["sends"]) == (1, 2), job
        finally:
            trainer.stop()
            if preparer is not None:
                preparer.stop()


def test_a_sweep_while_the_broker_is_down_counts_no_send_and_tries_every_job(tmp_path, caplog):
    with private_redis() as redis, postgres_database() as database_url:
        stack = make_stack(tmp_path, database_url=database_url, broker_url=redis.url)
        settings, app = stack.settings, celery_client(stack.settings)
        leave_mark(app)
        jobs = [_queued_job(settings) for _ in range(2)]
        with session_scope(settings.database_url) as session:
            for job_id in jobs:  # their first wait is over: both are due
                session.get(Job, job_id).sent_at = utcnow() - timedelta(hours=1)

        redis.shutdown_nosave()
        with caplog.at_level(logging.WARNING, logger="workers.recovery"):
            outcome = sweep(settings=settings, app=app)
        assert outcome.resent == []
        assert _sends(settings, jobs) == [(1, None), (1, None)]  # no wait doubled for nothing
        for job_id in jobs:  # the first failure did not stop the second try
            assert f"job {job_id}: its message could not be sent" in caplog.text

        redis.start()  # back, and empty: every queued job goes out now, counted once
        assert sorted(job.id for job in sweep(settings=settings, app=app).resent) == jobs
        first_wait = settings.queued_resend_s
        assert _sends(settings, jobs) == [(2, 2 * first_wait), (2, 2 * first_wait)]
        assert broker_kept_its_messages(app)


def test_a_run_that_ends_while_postgres_is_down_ends_succeeded_once_it_is_back(tmp_path):
    with private_postgres() as postgres:
        stack = make_stack(
            tmp_path, database_url=postgres.url, broker_url=f"sqla+sqlite:///{tmp_path}/b.sqlite"
        )
        settings = stack.settings
        job_id = _queued_job(settings)

        def back_soon() -> None:
            time.sleep(2)
            postgres.start()

        restart = threading.Thread(target=back_soon)

        def work(run) -> Outcome:
            postgres.stop()  # the work is done; the database goes away before its commit
            restart.start()

            def record(session) -> None:
                record_progress(
                    session, job_id=run.job_id, attempt=run.attempt, progress={"made": "it"}
                )

            return Outcome(record=record)

        try:
            assert run_job(settings=settings, job_id=job_id, work=work) == JobStatus.SUCCEEDED
        finally:
            if restart.is_alive():
                restart.join()
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id)
            assert (job.status, job.attempt, job.error, job.progress) == (
                "succeeded",
                1,
                None,
                {"made": "it"},
            )
        dispose_engines()


def _dataset_in_parts(settings, count: int) -> tuple[int, list[int]]:
    """A dataset whose job planned `count` parts, each claimed and with its shard written."""
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(settings.database_url) as session:
        dataset, job = create_dataset(session, name="parts", config={})
        claim_job(
            session, job_id=job.id, worker="w", device="cpu", stale_before=long_ago, max_attempts=3
        )
        shards = [f"train-{i:05d}-of-{count:05d}.arrow" for i in range(count)]
        parts = create_parts(
            session,
            parent_id=job.id,
            attempt=1,
            plan={},
            parts=[{"split": "train", "shard": shard} for shard in shards],
        )
        for part in parts:
            claim_job(
                session,
                job_id=part.id,
                worker="w",
                device="cpu",
                stale_before=long_ago,
                max_attempts=3,
            )
        folder = settings.artifact_path(f"datasets/{dataset.id}")
        folder.mkdir(parents=True)
        for shard in shards:
            (folder / shard).write_bytes(b"rows")
        return dataset.id, [part.id for part in parts]


def _end(settings, job_id: int, status: JobStatus) -> None:
    with session_scope(settings.database_url) as session:
        finish_job(session, job_id=job_id, attempt=1, status=status, error="boom")


def test_the_sweep_removes_the_shards_a_failed_dataset_left_once_no_part_runs(tmp_path):
    with postgres_database() as database_url:
        stack = make_stack(
            tmp_path, database_url=database_url, broker_url=f"sqla+sqlite:///{tmp_path}/b.sqlite"
        )
        settings, app = stack.settings, celery_client(stack.settings)
        failed, (done, broken, last) = _dataset_in_parts(settings, 3)
        _end(settings, done, JobStatus.SUCCEEDED)
        _end(settings, broken, JobStatus.FAILED)  # fails the dataset; `last` is asked to stop
        working, _ = _dataset_in_parts(settings, 1)
        folders = {d: settings.artifact_path(f"datasets/{d}") for d in (failed, working)}
        with session_scope(settings.database_url) as session:
            assert session.get(Dataset, failed).status == "failed"

        # A part of it still runs (it may still write): nothing is removed yet.
        assert sweep(settings=settings, app=app).cleaned == []
        assert all(folder.is_dir() for folder in folders.values())

        _end(settings, last, JobStatus.CANCELLED)
        assert sweep(settings=settings, app=app).cleaned == [failed]
        assert not folders[failed].exists()  # the finished part's shard went with the rest
        assert (folders[working] / "train-00000-of-00001.arrow").is_file()  # still preparing
