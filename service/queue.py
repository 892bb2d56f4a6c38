"""The queue vocabulary, stated once: what a job is, the states it moves through, the queue
it runs on and the task that runs it; and the Celery client both sides send through.

The API sends a job by its task name from here and never imports `workers/`; the workers
register their tasks under the same names (`workers/tasks.py`) and build their app on top
of `celery_client` (`workers/celery_app.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from service.db.engine import ensure_sqlite_folder
from service.settings import Settings


class JobStatus(StrEnum):
    """A job's state, in the order a job moves through them (running -> queued again when
    its worker is lost)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class ProductStatus(StrEnum):
    """The state of what a job makes (a dataset, an evaluation)."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A dataset or evaluation takes its status from the job that makes it.
PRODUCT_STATUS = {
    JobStatus.SUCCEEDED: ProductStatus.READY,
    JobStatus.FAILED: ProductStatus.FAILED,
    JobStatus.CANCELLED: ProductStatus.CANCELLED,
}


class JobKind(StrEnum):
    PREPARE = "prepare"
    # One shard of a dataset prepared in parts: a child of the dataset's prepare job.
    PREPARE_PART = "prepare_part"
    TRAIN = "train"
    EVALUATE = "evaluate"


class QueueName(StrEnum):
    # Tokenizing and the teacher's forward over a corpus: CPU or GPU machines.
    PREP = "prep"
    # Training and evaluation: GPU machines.
    TRAIN = "train"


# Evaluation runs the teacher over every example: it belongs with training on the GPU workers.
QUEUE_OF_KIND = {
    JobKind.PREPARE: QueueName.PREP,
    JobKind.PREPARE_PART: QueueName.PREP,
    JobKind.TRAIN: QueueName.TRAIN,
    JobKind.EVALUATE: QueueName.TRAIN,
}
TASK_OF_KIND = {
    JobKind.PREPARE: "gistnet.prepare_dataset",
    JobKind.PREPARE_PART: "gistnet.prepare_part",
    JobKind.TRAIN: "gistnet.train",
    JobKind.EVALUATE: "gistnet.evaluate",
}


class GistNetCelery(Celery):
    """A Celery app that carries the settings it was built from, for its tasks to read."""

    def __init__(self, settings: Settings, **kwargs: Any):
        super().__init__("gistnet", **kwargs)
        self.settings = settings


def is_sql_broker(broker_url: str) -> bool:
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def _transport_options(settings: Settings) -> dict[str, Any]:
    if is_sql_broker(settings.broker_url):
        # Every option here goes to sqlalchemy.create_engine; there is no visibility timeout
        # (a delivered message stays hidden for good), which is why recovery uses heartbeats.
        if "sqlite" in settings.broker_url:
            return {"connect_args": {"timeout": 30}}
        return {}
    # Redis/SQS hand an unacknowledged message to another worker after this long.
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def celery_client(settings: Settings, *, include: Iterable[str] = ()) -> GistNetCelery:
    """The Celery app as a sender sees it: broker, serialization, queues and routes."""
    if is_sql_broker(settings.broker_url):
        ensure_sqlite_folder(settings.broker_url.split("+", 1)[1])
    app = GistNetCelery(settings, broker=settings.broker_url, include=list(include))
    app.conf.update(
        # Job state lives in our database; Celery keeps no results.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(q.value, Exchange(q.value), routing_key=q.value) for q in QueueName],
        task_default_queue=QueueName.PREP.value,
        task_routes={TASK_OF_KIND[k]: {"queue": QUEUE_OF_KIND[k].value} for k in JobKind},
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
    )
    return app


def send_job(app: Celery, *, job_id: int, kind: str) -> None:
    """Enqueue a job whose row is committed. The message carries only the id."""
    kind = JobKind(kind)
    app.send_task(TASK_OF_KIND[kind], args=[job_id], queue=QUEUE_OF_KIND[kind].value)


# A queue nobody consumes, holding one message the workers' sweep leaves there. A broker that
# restarted without saving (or was emptied) has lost it along with every job's message.
MARK_QUEUE = "gistnet.mark"


def _marks(queue) -> int:
    # Declared, not looked up passively: with a key prefix, Redis's passive look-up misses.
    return queue.queue.queue_declare().message_count


def broker_kept_its_messages(app: Celery) -> bool:
    """Whether the mark left by `leave_mark` is still in the broker. A SQL broker keeps its
    messages in its database, which restarts with them: nothing to look at there."""
    if is_sql_broker(app.conf.broker_url):
        return True
    with app.connection_for_write() as connection, connection.SimpleQueue(MARK_QUEUE) as queue:
        return _marks(queue) > 0


def leave_mark(app: Celery) -> None:
    """Leave the mark (once every job's message that the broker lost was sent again)."""
    if is_sql_broker(app.conf.broker_url):
        return
    with app.connection_for_write() as connection, connection.SimpleQueue(MARK_QUEUE) as queue:
        if _marks(queue) == 0:
            queue.put({"mark": True})
