"""Nothing is lost when the broker forgets, and nothing is left behind when a job ends.

The Redis here is a server of the test's own on a free port: it is restarted with
SHUTDOWN NOSAVE, as an operator restarting Redis without persistence would, and every
message waiting in it is gone. The database, the record of truth, still says `queued`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from gistnet.train_request import TrainSettings
from service.artifacts import remove_resume_checkpoint, resume_checkpoint
from service.db.engine import session_scope
from service.db.jobs import claim_job
from service.db.models import Job, utcnow
from service.db.records import create_dataset, create_training_job
from service.queue import JobStatus, celery_client
from tests.private_servers import private_redis
from tests.service_stack import (
    dataset_body,
    make_stack,
    postgres_database,
    start_worker,
    train_body,
    wait_for_job,
    wait_until,
)
from workers.recovery import sweep
from workers.runner import Outcome, run_job

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_queued_job_survives_a_redis_restart_that_loses_its_message(tmp_path, teacher, documents):
    with private_redis() as redis, postgres_database() as database_url:
        stack = make_stack(tmp_path, database_url=database_url, broker_url=redis.url)
        worker = start_worker(stack)  # one worker, one task at a time: the second job waits
        try:
            with TestClient(create_app(stack.settings)) as client:
                accepted = client.post("/datasets", json=dataset_body(teacher, documents)).json()
                assert wait_for_job(client, accepted["job_id"])["status"] == "succeeded"
                body = train_body(accepted["dataset_id"], max_steps=300)
                first = client.post("/train", json=body).json()["job_id"]
                second = client.post(
                    "/train", json={**body, "training": {**body["training"], "max_steps": 5}}
                ).json()["job_id"]
                wait_until(
                    lambda: client.get(f"/jobs/{first}").json()["status"] == "running",
                    timeout=60,
                    what="the first job running",
                )
                assert client.get(f"/jobs/{second}").json()["status"] == "queued"

                redis.restart()  # SHUTDOWN NOSAVE: the second job's message is gone

                done = [wait_for_job(client, job_id, timeout=90) for job_id in (first, second)]
                assert [job["status"] for job in done] == ["succeeded", "succeeded"], done
                # Run once, from a message the sweep sent when the first was lost.
                assert done[1]["attempt"] == 1 and done[1]["sends"] >= 2
        finally:
            worker.stop()


# --------------------------------------------------------------------------- clean-up


@pytest.fixture
def records(tmp_path):
    return make_stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path}/records.sqlite",
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.sqlite",
    )


def _training_job_with_a_checkpoint(stack) -> tuple[int, object]:
    with session_scope(stack.settings.database_url) as session:
        dataset, _ = create_dataset(session, name="d", config={})
        job_id = create_training_job(
            session, dataset_id=dataset.id, settings=TrainSettings(split="train").to_dict()
        ).id
    resume = stack.settings.artifact_path(resume_checkpoint(job_id))
    resume.parent.mkdir(parents=True)
    resume.write_bytes(b"weights")
    return job_id, resume


def _work_that(raises: Exception | None):
    """A run that tidies up as the training task does, then ends as told."""

    def work(run):
        run.at_end(lambda: remove_resume_checkpoint(run.settings.artifact_store(), run.job_id))
        if raises is not None:
            raise raises
        return Outcome(record=lambda session: None)

    return work


@pytest.mark.parametrize(
    ("raises", "status"),
    [(None, "succeeded"), (RuntimeError("boom"), "failed")],
)
def test_a_job_that_ends_leaves_no_resume_checkpoint(records, raises, status):
    job_id, resume = _training_job_with_a_checkpoint(records)
    assert run_job(settings=records.settings, job_id=job_id, work=_work_that(raises)) == status
    assert not resume.exists()


def test_a_cancelled_run_leaves_no_resume_checkpoint(records):
    from gistnet.errors import Cancelled

    job_id, resume = _training_job_with_a_checkpoint(records)
    outcome = run_job(settings=records.settings, job_id=job_id, work=_work_that(Cancelled("stop")))
    assert outcome == JobStatus.CANCELLED and not resume.exists()


def test_a_run_that_lost_its_job_keeps_the_checkpoint_for_the_run_that_took_it(records):
    job_id, resume = _training_job_with_a_checkpoint(records)

    def work(run):
        run.at_end(lambda: resume.unlink())
        run.lost = True  # another worker took the job meanwhile
        raise RuntimeError("stopped")

    assert run_job(settings=records.settings, job_id=job_id, work=work) == "lost"
    assert resume.exists()


def test_a_job_the_sweep_gives_up_on_leaves_no_resume_checkpoint(records):
    settings = records.settings
    job_id, resume = _training_job_with_a_checkpoint(records)
    with session_scope(settings.database_url) as session:
        claim_job(
            session,
            job_id=job_id,
            worker="dead:1",
            device="cpu",
            stale_before=utcnow(),
            max_attempts=settings.max_attempts,
        )
        job = session.get(Job, job_id)
        job.attempt = settings.max_attempts
        job.heartbeat_at = utcnow() - timedelta(hours=1)
    outcome = sweep(settings=settings, app=celery_client(settings))
    assert [job.id for job in outcome.failed] == [job_id]
    assert not resume.exists()
