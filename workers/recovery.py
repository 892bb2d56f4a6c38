"""Finding jobs whose worker died or whose message was lost, and sending them again.

Brokers disagree on what happens to a message whose worker died: Redis hands it out again
only after the visibility timeout (hours, since it must outlast the longest job), and the
SQL broker never does. A Redis that restarts without saving loses every waiting message.
So recovery does not rely on them: the database is the record of truth. Each worker's main
process sweeps the jobs table every heartbeat interval:

- a `running` job whose heartbeat is older than the timeout goes back to `queued` with a
  fresh message (or fails after max_attempts);
- a `queued` job nobody claimed within GISTNET_QUEUED_RESEND_S is sent again, with a wait
  that doubles each time; a send counts only once it went out;
- when the broker has lost the mark the sweep leaves in a queue of its own (it restarted
  without saving, so every waiting message is gone), every queued job is sent again at once.

If the broker delivers an old message as well, the task finds the job taken and does
nothing. The sweep also deletes expired Idempotency-Key answers, and the files of datasets
that failed or were cancelled (the shards of their finished parts).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from service.artifacts import (
    datasets_with_files,
    remove_dataset_files,
    remove_resume_checkpoint,
)
from service.db.engine import session_scope
from service.db.idempotency import purge_expired_keys
from service.db.models import Job, utcnow
from service.db.recovery import (
    Recovery,
    count_send,
    datasets_to_clean,
    queued_jobs_to_send,
    recover_stale_jobs,
)
from service.queue import JobKind, broker_kept_its_messages, leave_mark, send_job
from service.settings import Settings

log = logging.getLogger(__name__)

# How many queued jobs one round of resends looks at.
QUEUED_ROUND = 100


def sweep(*, settings: Settings, app: Celery) -> Recovery:
    """One pass: re-queue (or fail) every job whose worker stopped beating, send again every
    queued job whose message may be lost, and remove what failed datasets left behind."""
    with session_scope(settings.database_url) as session:
        outcome = recover_stale_jobs(
            session,
            stale_before=utcnow() - timedelta(seconds=settings.heartbeat_timeout_s),
            max_attempts=settings.max_attempts,
            timeout_s=settings.heartbeat_timeout_s,
        )
        purge_expired_keys(session)
    # After the commit: the new message must find the job queued.
    for job in outcome.requeued:
        log.warning("job %s lost its worker during attempt %s: queued again", job.id, job.attempt)
        try:
            send_job(app, job_id=job.id, kind=job.kind)
        except Exception:  # it is queued: the resend below, or a later sweep, sends it
            log.exception("job %s: its message could not be sent", job.id)
    for job in outcome.failed:
        log.warning("job %s lost its worker during attempt %s: not run again", job.id, job.attempt)
        # It will not resume: its resume checkpoint is only taking space.
        if job.kind == JobKind.TRAIN:
            remove_resume_checkpoint(settings.artifact_store(), job.id)
    outcome.resent = resend_unclaimed(settings=settings, app=app)
    outcome.cleaned = remove_failed_datasets_files(settings)
    return outcome


def remove_failed_datasets_files(settings: Settings) -> list[int]:
    """Delete the shards (finished parts' included) of every dataset that failed or was
    cancelled, once none of its jobs still runs. Returns their ids."""
    store = settings.artifact_store()
    with session_scope(settings.database_url) as session:
        done_with = datasets_to_clean(session, dataset_ids=datasets_with_files(store))
    for dataset_id in done_with:
        log.info("dataset %s failed or was cancelled: its files are removed", dataset_id)
        remove_dataset_files(store, dataset_id)
    return done_with


def resend_unclaimed(*, settings: Settings, app: Celery) -> list[Job]:
    """Send again the queued jobs whose message may be lost: at once, every one of them, when
    the broker has lost the mark this sweep leaves in it (it restarted without saving); else
    those unclaimed past their wait. Each is counted only once its message went out, and a
    send that fails leaves the others to be tried."""
    try:
        lost_before = None if broker_kept_its_messages(app) else utcnow()
    except Exception:  # the broker is away: the sends below fail, uncounted, until it is back
        log.warning("the broker is unreachable: queued jobs are sent once it is back")
        lost_before = None
    if lost_before is not None:
        log.warning(
            "the broker holds no mark (it is new, or restarted without saving its messages): "
            "sending every queued job again"
        )
    resent: list[Job] = []
    while True:
        with session_scope(settings.database_url) as session:
            due = queued_jobs_to_send(
                session,
                first_wait_s=settings.queued_resend_s,
                lost_before=lost_before,
                limit=QUEUED_ROUND,
            )
        failed = 0
        for job in due:
            try:
                with session_scope(settings.database_url) as session:
                    counted = count_send(
                        session,
                        job=job,
                        first_wait_s=settings.queued_resend_s,
                        max_wait_s=settings.queued_resend_max_s,
                    )
                    if counted is not None:  # in the transaction: a failed send counts nothing
                        send_job(app, job_id=job.id, kind=job.kind)
            except Exception:
                log.exception("job %s: its message could not be sent; tried again later", job.id)
                failed += 1
                continue
            if counted is not None:
                log.warning(
                    "job %s is still queued and unclaimed: message %s sent (an earlier one may "
                    "be lost)",
                    job.id,
                    counted.sends,
                )
                resent.append(counted)
        # After a loss, round after round until every queued job went out; then the mark.
        if lost_before is None or failed or len(due) < QUEUED_ROUND:
            break
    if lost_before is not None and not failed:
        leave_mark(app)
    return resent


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
