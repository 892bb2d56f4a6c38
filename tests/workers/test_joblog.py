"""workers/joblog.py in this process, on an embedded stack: what a run records of what is
logged while it runs (its own threads, INFO and above), the bound on its lines, and its
last lines committed with the transaction that ends the job."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest

from service.db.engine import session_scope
from service.db.jobs import claim_job, finish_job
from service.db.logs import job_logs
from service.db.models import Job, utcnow
from service.db.records import create_dataset
from service.queue import JobStatus
from service.settings import load_settings
from tests.service_stack import REDIS_DB, stack_of_kind
from workers.joblog import JobLogHandler
from workers.runner import JobRun, worker_name

pytestmark = [pytest.mark.services]

log = logging.getLogger("tests.workers.joblog")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    root = tmp_path_factory.mktemp("joblog")
    with stack_of_kind("embedded", root, redis_db=REDIS_DB["workers"]) as stack:
        yield load_settings(**{**stack.settings.model_dump(), "job_log_max_lines": 3})


def _claimed_run(settings) -> JobRun:
    with session_scope(settings.database_url) as session:
        _, job = create_dataset(session, name="logs", config={"dataset_name": "logs"})
        session.flush()
        job = claim_job(
            session,
            job_id=job.id,
            worker=worker_name(),
            device="cpu",
            stale_before=utcnow() - timedelta(seconds=60),
            max_attempts=3,
        )
        return JobRun(settings=settings, job=job)


def test_a_run_records_its_own_lines_up_to_the_bound_and_its_last_with_its_end(settings):
    run = _claimed_run(settings)
    previous = log.level
    log.setLevel(logging.DEBUG)  # the handler, not the logger, leaves out DEBUG
    run.record_logs()
    try:
        log.debug("not recorded: below INFO")
        other = threading.Thread(target=lambda: log.info("not recorded: another job's thread"))
        other.start()
        other.join()
        for i in range(5):
            log.info("line %d", i)
        job_id = run.job_id
        end = run.ending_with_logs(
            lambda session: finish_job(
                session, job_id=job_id, attempt=run.attempt, status=JobStatus.SUCCEEDED
            )
        )
        with session_scope(settings.database_url) as session:
            end(session)
    finally:
        run.stop_recording_logs()
        log.setLevel(previous)
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == JobStatus.SUCCEEDED
        lines = job_logs(session, job_id=job_id, limit=100)
        messages = [line.message for line in lines]
        levels = [line.level for line in lines]
    assert messages[:3] == ["line 0", "line 1", "line 2"]
    assert messages[3].startswith("2 more lines were not recorded")
    assert "GISTNET_JOB_LOG_MAX_LINES=3" in messages[3] and levels[3] == "WARNING"
    assert len(messages) == 4
    assert {line.attempt for line in lines} == {1}
    assert not [h for h in logging.getLogger().handlers if isinstance(h, JobLogHandler)]
