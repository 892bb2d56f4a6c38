"""The records: datasets, jobs, the checkpoints training produced, loss curves, evaluations.

Job state lives here rather than in Celery's result backend, so the API answers from one
place whichever worker ran the job, and a crashed worker's job can be found and re-queued.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from service.queue import JobStatus, ProductStatus

# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use service.db.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=ProductStatus.PENDING)
    # The request as validated (inline documents included), so the job can run from the row.
    config: Mapped[dict[str, Any]]
    # metadata.yaml as prepare_dataset returned it; None until the dataset is ready.
    info: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Folder of the shards, relative to the artifact root.
    path: Mapped[str | None] = mapped_column(String(500), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Newest first; the list views load them with the datasets in one more query.
    prepare_jobs: Mapped[list[Job]] = relationship(
        primaryjoin="and_(Dataset.id == Job.dataset_id, Job.kind == 'prepare')",
        order_by="Job.id.desc()",
        viewonly=True,
    )


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_status_resend_at", "status", "resend_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    queue: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    # The dataset a job prepares, trains on or evaluates on.
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True, default=None
    )
    # What the task needs besides the ids: the run config and split of a training job.
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A dataset prepared in parts: each part is a job of its own (kind prepare_part), a
    # child of the dataset's job. The parent's part_count is how many it has.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True, default=None
    )
    part_index: Mapped[int | None] = mapped_column(default=None)
    part_count: Mapped[int | None] = mapped_column(default=None)
    # Progress, written at most every progress_interval_s while the job runs.
    step: Mapped[int | None] = mapped_column(default=None)
    max_steps: Mapped[int | None] = mapped_column(default=None)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    examples_per_sec: Mapped[float | None] = mapped_column(Float, default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Runs started so far; a worker lost mid-run makes the next run attempt 2.
    attempt: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    device: Mapped[str | None] = mapped_column(String(50), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    error_type: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # Messages sent for this job, and when the last one went. The database, not the broker,
    # is the record of truth: a job still queued at `resend_at` (None: the first wait after
    # `sent_at`) may have lost its message and is sent again (a duplicate is harmless: the
    # claim takes a job once).
    sends: Mapped[int] = mapped_column(default=0, server_default="0")
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    resend_at: Mapped[datetime | None] = mapped_column(default=None)

    # What the job made, if it makes a model or an evaluation (a dataset is `dataset_id`).
    model: Mapped[Model | None] = relationship(viewonly=True)
    evaluation: Mapped[Evaluation | None] = relationship(viewonly=True)


class Model(Base):
    """A checkpoint a training job produced."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One model per training job: a re-run job finds its row instead of adding a second.
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    split: Mapped[str] = mapped_column(String(100))
    # Relative to the artifact root.
    checkpoint_path: Mapped[str] = mapped_column(String(500))
    model_config: Mapped[dict[str, Any]]
    training_config: Mapped[dict[str, Any]]
    teacher: Mapped[str] = mapped_column(String(500))
    tokenizer: Mapped[str] = mapped_column(String(500))
    block_size: Mapped[int]
    hidden_size: Mapped[int]
    steps: Mapped[int]
    final_loss: Mapped[float | None] = mapped_column(Float, default=None)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobMetric(Base):
    """One point of a training job's loss curve."""

    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_job_metrics_job_id_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    loss: Mapped[float] = mapped_column(Float)
    running_loss: Mapped[float | None] = mapped_column(Float, default=None)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    lr: Mapped[float | None] = mapped_column(Float, default=None)
    examples_per_sec: Mapped[float | None] = mapped_column(Float, default=None)
    attempt: Mapped[int] = mapped_column(default=1)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobLog(Base):
    """One line a worker logged while it ran a job (GET /jobs/{id}/logs). In the database,
    not a worker's file, so the API reads it whichever machine ran the job."""

    __tablename__ = "job_logs"
    # GET /jobs/{id}/logs reads one job's lines in order, from the end or after an id.
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    logged_at: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(10))
    logger: Mapped[str] = mapped_column(String(200))
    worker: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)


class Evaluation(Base):
    """ΔNLL@H of a model on a dataset split, measured by an evaluation job."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    split: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default=ProductStatus.PENDING)
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(viewonly=True)


class Memory(Base):
    """A document compressed once by a model: its gists and token ids, an artifact that
    a context (POST /score, POST /generate) reads as often as it is named."""

    __tablename__ = "memories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Its gists are that model's: a context of another model cannot read them.
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    # The artifact (gists and token ids), relative to the artifact root.
    path: Mapped[str] = mapped_column(String(500))
    # The document's tokens, and the full blocks among them that became gists (the tail
    # shorter than a block is read raw).
    tokens: Mapped[int]
    blocks: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(viewonly=True)


class IdempotencyKey(Base):
    """The answer a POST with an `Idempotency-Key` header got, so that a retry of the same
    request gets it again instead of making a second dataset or job. Written in the same
    transaction as the rows the request made: if those exist, so does the answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("route", "key", name="uq_idempotency_keys_route_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # e.g. "POST /datasets": the same key on two routes names two requests.
    route: Mapped[str] = mapped_column(String(50))
    key: Mapped[str] = mapped_column(String(200))
    # sha256 of the request body as validated, so the same key with another body is caught.
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
