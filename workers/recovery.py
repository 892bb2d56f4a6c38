"""Finding jobs whose worker died or whose message was lost, and sending them again.

Brokers disagree on what happens to a message whose worker died: Redis hands it out again
only after the visibility timeout (hours, since it must outlast the longest job), and the
SQL broker never does. A Redis that restarts without saving loses every waiting message.
So recovery does not rely on them: the database is the record of truth. Each worker's main
process sweeps the jobs table every heartbeat interval:

- a `running` job whose heartbeat is older than the timeout goes back to `queued` with a
  fresh message (or fails after max_attempts);
- a `queued` job nobody claimed within GISTNET_QUEUED_RESEND_S is sent again, with a wait
  that doubles each time.

If the broker delivers an old message as well, the task finds the job taken and does
nothing. The sweep also deletes expired Idempotency-Key answers.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from service.artifacts import remove_resume_checkpoint
from service.db.engine import session_scope
from service.db.idempotency import purge_expired_keys
from service.db.models import utcnow
from service.db.recovery import Recovery, recover_stale_jobs, resend_queued_jobs
from service.queue import JobKind, send_job
from service.settings import Settings

log = logging.getLogger(__name__)


def sweep(*, settings: Settings, app: Celery) -> Recovery:
    """One pass: re-queue (or fail) every job whose worker stopped beating, and send again
    every queued job whose message may be lost."""
    with session_scope(settings.database_url) as session:
        outcome = recover_stale_jobs(
            session,
            stale_before=utcnow() - timedelta(seconds=settings.heartbeat_timeout_s),
            max_attempts=settings.max_attempts,
            timeout_s=settings.heartbeat_timeout_s,
        )
    with session_scope(settings.database_url) as session:
        unclaimed = resend_queued_jobs(
            session,
            first_wait_s=settings.queued_resend_s,
            max_wait_s=settings.queued_resend_max_s,
        )
        purge_expired_keys(session)
    # After the commit: the new message must find the job queued.
    for job in outcome.requeued:
        log.warning("job %s lost its worker during attempt %s: queued again", job.id, job.attempt)
        send_job(app, job_id=job.id, kind=job.kind)
    for job in unclaimed:
        log.warning(
            "job %s is still queued and unclaimed: message %s sent (an earlier one may be lost)",
            job.id,
            job.sends,
        )
        send_job(app, job_id=job.id, kind=job.kind)
    for job in outcome.failed:
        log.warning("job %s lost its worker during attempt %s: not run again", job.id, job.attempt)
        # It will not resume: its resume checkpoint is only taking space.
        if job.kind == JobKind.TRAIN:
            remove_resume_checkpoint(settings.artifact_store(), job.id)
    outcome.resent = unclaimed
    return outcome


class RecoveryThread(threading.Thread):
    def __init__(self, *, settings: Settings, app: Celery):
        super().__init__(name="gistnet-recovery", daemon=True)
        self.settings, self.app = settings, app
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                sweep(settings=self.settings, app=self.app)
            except Exception:  # the database or broker is away: try at the next interval
                log.exception("recovery sweep failed")
            if self.stopped.wait(self.settings.heartbeat_interval_s):
                return


_thread: RecoveryThread | None = None


@worker_ready.connect
def _start_recovery(sender=None, **_) -> None:
    global _thread
    app = sender.app
    settings = getattr(app, "settings", None)
    if settings is None:
        return
    _thread = RecoveryThread(settings=settings, app=app)
    _thread.start()


@worker_shutdown.connect
def _stop_recovery(**_) -> None:
    if _thread is not None:
        _thread.stopped.set()
