"""Finding jobs whose worker died, and sending them again.

Brokers disagree on what happens to a message whose worker died: Redis hands it out again
only after the visibility timeout (hours, since it must outlast the longest job), and the
SQL broker never does. So recovery does not rely on them: each worker's main process sweeps
the jobs table every heartbeat interval, and a `running` job whose heartbeat is older than
the timeout goes back to `queued` with a fresh message (or fails after max_attempts). If the
broker redelivers the old message as well, the task finds the job taken and does nothing.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from service.db.engine import session_scope
from service.db.jobs import Recovery, recover_stale_jobs
from service.db.models import utcnow
from service.queue import send_job
from service.settings import Settings

log = logging.getLogger(__name__)


def sweep(*, settings: Settings, app: Celery) -> Recovery:
    """One pass: re-queue (or fail) every job whose worker stopped beating."""
    with session_scope(settings.database_url) as session:
        outcome = recover_stale_jobs(
            session,
            stale_before=utcnow() - timedelta(seconds=settings.heartbeat_timeout_s),
            max_attempts=settings.max_attempts,
            timeout_s=settings.heartbeat_timeout_s,
        )
    # After the commit: the new message must find the job queued.
    for job in outcome.requeued:
        log.warning("job %s lost its worker during attempt %s: queued again", job.id, job.attempt)
        send_job(app, job_id=job.id, kind=job.kind)
    for job in outcome.failed:
        log.warning("job %s lost its worker during attempt %s: not run again", job.id, job.attempt)
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
