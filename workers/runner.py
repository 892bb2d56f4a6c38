"""One run of one job inside a worker process: claim it, beat, record progress, settle it.

The tasks hand `run_job` a function that does the work through the library and returns
how to record the result; everything about job state is here, once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from service.db.engine import session_scope
from service.db.jobs import (
    LostJob,
    beat,
    claim_job,
    detach_job,
    finish_job,
    record_progress,
    requeue_job,
)
from service.db.logs import add_job_logs
from service.db.models import Job, utcnow
from service.queue import JobStatus, send_job
from service.settings import Settings
from workers.joblog import JobLogHandler

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Outcome:
    """How to record a finished run: the result rows, written in the same transaction that
    marks the job `succeeded`, so a succeeded job always has its result."""

    record: Callable[[Session], None] | None = None
    # The job goes on without this run: a dataset's job whose parts now run as jobs of
    # their own stays `running`, detached (see service.db.jobs.detach_job).
    detach: bool = False


class JobRun:
    """One attempt of one job: what the work function needs (ids, params, settings), and
    the heartbeat, throttled progress and cancel check around it."""

    def __init__(self, *, settings: Settings, job: Job):
        self.settings = settings
        self.job_id, self.attempt, self.kind = job.id, job.attempt, job.kind
        self.dataset_id = job.dataset_id
        self.parent_id, self.part_index = job.parent_id, job.part_index
        self.params: dict[str, Any] = dict(job.params or {})
        # Set when the job stopped being this run's (re-queued, handed to another worker).
        self.lost = False
        self._cancel_requested = False
        self._last_cancel_check = time.monotonic()
        self._last_flush = 0.0
        self._progress: dict[str, Any] = {}
        self._metrics: list[dict[str, Any]] = []
        self._metrics_flushed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._at_end: list[Callable[[], None]] = []
        self._log_handler: JobLogHandler | None = None

    def at_end(self, tidy: Callable[[], None]) -> None:
        """Run `tidy` once the job has ended for good (succeeded, failed or cancelled, and
        committed so): e.g. removing the resume checkpoint, which must outlive any crash
        before then. Not when the job was lost to another run, which may still need it."""
        self._at_end.append(tidy)

    def ended(self) -> None:
        for tidy in self._at_end:
            try:
                tidy()
            except Exception:  # tidying up must not turn a finished job into a failed one
                log.exception("clean-up after job %s failed", self.job_id)

    # ------------------------------------------------------------------ log lines

    def record_logs(self) -> None:
        """From now until `stop_recording_logs`, what this run logs is the job's log."""
        self._log_handler = JobLogHandler(
            settings=self.settings, job_id=self.job_id, attempt=self.attempt, worker=worker_name()
        )
        logging.getLogger().addHandler(self._log_handler)

    def write_logs(self) -> None:
        if self._log_handler is not None:
            self._log_handler.write()

    def ending_with_logs(self, end: Callable[[Session], None]) -> Callable[[Session], None]:
        """`end` (the transaction that finishes the job) writing the run's last lines too."""
        rows = self._log_handler.take() if self._log_handler is not None else []

        def end_and_log(session: Session) -> None:
            add_job_logs(session, rows=rows)
            end(session)

        return end_and_log

    def stop_recording_logs(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    # ------------------------------------------------------------------ heartbeat

    def start_heartbeat(self) -> None:
        """Beat from a thread, so a long step (loading a teacher, one slow batch) cannot
        make a live job look dead."""
        self._beater = threading.Thread(
            target=self._beat_forever, name=f"heartbeat-job-{self.job_id}", daemon=True
        )
        self._beater.start()
        if self._log_handler is not None:
            self._log_handler.follow_thread(self._beater)

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=10)

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            self.write_logs()  # lines logged since the last write, even when no more come
            try:
                with session_scope(self.settings.database_url) as session:
                    self._cancel_requested |= beat(
                        session, job_id=self.job_id, attempt=self.attempt
                    )
            except LostJob:
                log.warning(
                    "job %s attempt %s was taken from this worker", self.job_id, self.attempt
                )
                self.lost = True
                return
            except Exception:  # the database hiccuped: try again at the next beat
                log.exception("heartbeat of job %s failed", self.job_id)

    # ------------------------------------------------------------------ cancel check

    def should_cancel(self) -> bool:
        """The library's cancel check: a user's cancel request, or the job was taken away."""
        if self.lost or self._cancel_requested:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= self.settings.cancel_poll_s:
            self._last_cancel_check = now
            try:
                with session_scope(self.settings.database_url) as session:
                    row = session.execute(
                        select(Job.cancel_requested, Job.status, Job.attempt).where(
                            Job.id == self.job_id
                        )
                    ).one()
            except Exception:  # the database hiccuped: the job goes on, look again later
                log.exception("cancel check of job %s failed", self.job_id)
                return False
            if row.status != JobStatus.RUNNING or row.attempt != self.attempt:
                self.lost = True
            self._cancel_requested |= bool(row.cancel_requested)
        return self.lost or self._cancel_requested

    # ------------------------------------------------------------------ progress

    def report(self, *, metric: dict[str, Any] | None = None, **fields: Any) -> None:
        """Progress fields (step, max_steps, loss, examples_per_sec, progress) and an optional
        loss-curve point; written at most every progress_interval_s."""
        with self._lock:
            self._progress.update({k: v for k, v in fields.items() if v is not None})
            if metric is not None:
                self._metrics.append(metric)
        if time.monotonic() - self._last_flush >= self.settings.progress_interval_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, {}
            metrics, self._metrics = self._metrics, []
        self._last_flush = time.monotonic()
        self.write_logs()
        if not progress and not metrics:
            return
        replace_from = None
        if metrics and not self._metrics_flushed:
            replace_from = min(m["step"] for m in metrics)
        try:
            with session_scope(self.settings.database_url) as session:
                record_progress(
                    session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    metrics=metrics,
                    replace_from_step=replace_from,
                    **progress,
                )
            self._metrics_flushed = self._metrics_flushed or bool(metrics)
        except LostJob:
            self.lost = True
        except Exception:  # the database hiccuped: keep the points for the next flush
            log.exception("progress of job %s not recorded; will retry", self.job_id)
            with self._lock:
                self._progress = {**progress, **self._progress}
                self._metrics = metrics + self._metrics


DETACHED = "detached"


def run_job(*, settings: Settings, job_id: int, work: Callable[[JobRun], Outcome], app=None) -> str:
    """Claim the job, do the work, and settle it. Returns what happened, for the task log.

    A job whose work raises ends `failed` with the message (`cancelled` for Cancelled);
    it never stays `running`. Only the death of the process itself leaves it running,
    and then the heartbeat stops and recovery queues it again. An error marked
    `retryable` (a training process died) queues it again at once through `app`, while
    attempts remain, as recovery would after a lost worker.
    """
    with session_scope(settings.database_url) as session:
        job = claim_job(
            session,
            job_id=job_id,
            worker=worker_name(),
            device=settings.device,
            stale_before=utcnow() - timedelta(seconds=settings.heartbeat_timeout_s),
            max_attempts=settings.max_attempts,
        )
        if job is None:
            log.info("job %s is finished, cancelled or running elsewhere: nothing to do", job_id)
            return "skipped"
        run = JobRun(settings=settings, job=job)
    return run_claimed(run, work=work, app=app)


def run_claimed(run: JobRun, *, work: Callable[[JobRun], Outcome], app=None) -> str:
    """Do the work of a job this process holds (claimed, or a parent taken over) and
    settle it: succeeded, failed, cancelled, queued again (see run_job), or detached to
    its parts."""
    from gistnet.errors import Cancelled, GistNetError

    settings, job_id = run.settings, run.job_id
    run.record_logs()
    log.info(
        "job %s (%s) attempt %s started on %s", job_id, run.kind, run.attempt, worker_name()
    )
    run.start_heartbeat()
    try:
        outcome = work(run)
        run.flush()
        if outcome.detach:
            with session_scope(settings.database_url) as session:
                if detach_job(session, job_id=job_id, attempt=run.attempt):
                    log.info("job %s goes on in its parts, each a job of its own", job_id)
                    return DETACHED
            raise Cancelled("cancelled before its parts ran")

        def succeed(session: Session) -> None:
            if outcome.record is not None:
                outcome.record(session)
            finish_job(session, job_id=job_id, attempt=run.attempt, status=JobStatus.SUCCEEDED)

        log.info("job %s attempt %s done; recording it succeeded", job_id, run.attempt)
        commit_final(settings, run.ending_with_logs(succeed))
        run.ended()
        return JobStatus.SUCCEEDED
    except LostJob:
        log.warning("job %s attempt %s: another run owns the job now", job_id, run.attempt)
        return "lost"
    except Exception as exc:
        if run.lost:
            log.warning(
                "job %s attempt %s stopped: another run owns the job now", job_id, run.attempt
            )
            return "lost"
        if (
            getattr(exc, "retryable", False)
            and app is not None
            and run.attempt < settings.max_attempts
            and _requeue(settings, app, run, exc)
        ):
            return JobStatus.QUEUED
        if isinstance(exc, Cancelled):
            status, message = JobStatus.CANCELLED, str(exc) or "cancelled"
            log.info("job %s attempt %s cancelled: %s", job_id, run.attempt, message)
        else:
            status = JobStatus.FAILED
            message = (
                str(exc) or type(exc).__name__
                if isinstance(exc, GistNetError)
                else f"{type(exc).__name__}: {exc}"
            )
            log.exception("job %s attempt %s failed", job_id, run.attempt)
        try:
            run.flush()
        except Exception:
            log.exception("could not record the last progress of job %s", job_id)
        try:
            commit_final(
                settings,
                run.ending_with_logs(
                    partial(
                        finish_job,
                        job_id=job_id,
                        attempt=run.attempt,
                        status=status,
                        error=message,
                        error_type=type(exc).__name__,
                    )
                ),
            )
        except LostJob:
            return "lost"
        # A failed or cancelled job does not run again.
        run.ended()
        return status
    finally:
        run.stop_heartbeat()
        run.stop_recording_logs()


def commit_final(settings: Settings, write: Callable[[Session], None]) -> None:
    """Commit the transaction that ends a run, trying it again while the database is
    unreachable (a restart, a failover) for up to GISTNET_FINAL_COMMIT_RETRY_S, with a
    doubling wait. The work is done: giving up at once would leave the job `running` until
    its heartbeat times out, then run it again. LostJob and every other error end it."""
    deadline = time.monotonic() + settings.final_commit_retry_s
    wait = 0.5
    while True:
        try:
            with session_scope(settings.database_url) as session:
                write(session)
            return
        except (OperationalError, InterfaceError) as err:
            if time.monotonic() + wait > deadline:
                raise
            log.warning(
                "the database is unreachable (%s): the run's last commit is tried again in %gs",
                type(err.orig).__name__ if err.orig is not None else type(err).__name__,
                wait,
            )
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def _requeue(settings: Settings, app, run: JobRun, exc: Exception) -> bool:
    error = f"attempt {run.attempt} failed: {exc}; queued again"
    log.warning("job %s attempt %s: %s", run.job_id, run.attempt, error)
    try:
        run.flush()
        with session_scope(settings.database_url) as session:
            moved = requeue_job(
                session,
                job_id=run.job_id,
                attempt=run.attempt,
                error=error,
                error_type=type(exc).__name__,
            )
    except Exception:
        log.exception("could not queue job %s again", run.job_id)
        return False
    if moved:  # after the commit: the message must find the job queued
        send_job(app, job_id=run.job_id, kind=run.kind)
    return moved
