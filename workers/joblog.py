"""The log lines of a job, recorded in the database while a worker runs it.

A handler on the root logger, for the length of one run, keeps what the run's own threads
log (the task's thread and its heartbeat: a process with threads running other jobs keeps
theirs apart) and writes it in batches, at most every `progress_interval_s` and when the
run ends, so GET /jobs/{id}/logs can follow a job from any machine. One run records at
most `job_log_max_lines` lines; past them it counts, and says how many went unrecorded.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from service.db.engine import session_scope
from service.db.logs import add_job_logs
from service.db.models import utcnow
from service.settings import Settings

# A line longer than this (a long traceback, a dumped config) is cut, saying so.
MAX_LINE_CHARS = 16_000
# Loggers whose records are the recording itself (or noise about it): never recorded.
_OWN_LOGGERS = ("sqlalchemy", "psycopg", "kombu", "amqp", "celery.worker", "celery.pool")


def _clip(message: str) -> str:
    if len(message) <= MAX_LINE_CHARS:
        return message
    return f"{message[:MAX_LINE_CHARS]}... ({len(message) - MAX_LINE_CHARS} characters cut)"


class JobLogHandler(logging.Handler):
    def __init__(self, *, settings: Settings, job_id: int, attempt: int, worker: str):
        super().__init__(level=logging.INFO)
        self.settings = settings
        self.job_id, self.attempt, self.worker = job_id, attempt, worker
        self.threads: set[int] = {threading.get_ident()}
        self._rows: list[dict[str, Any]] = []
        self._kept = 0
        self._dropped = 0
        self._last_write = time.monotonic()
        self._writing = threading.local()
        self.setFormatter(logging.Formatter("%(message)s"))

    def follow_thread(self, thread: threading.Thread) -> None:
        """Record what `thread` logs too (a thread the run started, such as its heartbeat)."""
        if thread.ident is not None:
            self.threads.add(thread.ident)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread not in self.threads or getattr(self._writing, "active", False):
            return
        if record.name.startswith(_OWN_LOGGERS):
            return
        with self.lock:
            if self._kept >= self.settings.job_log_max_lines:
                self._dropped += 1
                return
            self._kept += 1
            self._rows.append(self._row(record.levelname, record.name, self.format(record)))
        if time.monotonic() - self._last_write >= self.settings.progress_interval_s:
            self.write()

    def _row(self, level: str, logger: str, message: str) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "attempt": self.attempt,
            "logged_at": utcnow(),
            "level": level,
            "logger": logger[:200],
            "worker": self.worker[:200],
            "message": _clip(message),
        }

    def take(self) -> list[dict[str, Any]]:
        """The lines not written yet (and how many went unrecorded, if any), handed to the
        caller to write: the run's last lines go in the transaction that ends the job, so
        whoever sees the job finished sees its lines too."""
        with self.lock:
            if self._dropped:
                self._rows.append(
                    self._row(
                        "WARNING",
                        __name__,
                        f"{self._dropped} more lines were not recorded: a run records at most "
                        f"GISTNET_JOB_LOG_MAX_LINES={self.settings.job_log_max_lines}",
                    )
                )
                self._dropped = 0
            rows, self._rows = self._rows, []
        self._last_write = time.monotonic()
        return rows

    def write(self) -> None:
        """Write the lines gathered so far; on a database error keep them for the next try."""
        rows = self.take()
        if not rows:
            return
        self._writing.active = True
        try:
            with session_scope(self.settings.database_url) as session:
                add_job_logs(session, rows=rows)
        except Exception:  # the database hiccuped: the lines wait for the next write
            with self.lock:
                self._rows = rows + self._rows
        finally:
            self._writing.active = False

    def close(self) -> None:
        self.write()
        super().close()
