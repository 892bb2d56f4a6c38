"""Datasets, models, loss curves and evaluations: the rows jobs make and the API reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service.artifacts import memory_file
from service.db.jobs import create_job
from service.db.models import Dataset, Evaluation, Job, JobMetric, Memory, Model, utcnow
from service.queue import JobKind, ProductStatus


def _page(session: Session, query, *, limit: int, offset: int, order) -> tuple[Sequence, int]:
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(order).limit(limit).offset(offset)).all()
    return rows, count


# --------------------------------------------------------------------------- datasets


def create_dataset(session: Session, *, name: str, config: dict[str, Any]) -> tuple[Dataset, Job]:
    """The dataset row and the job that prepares it, in the caller's transaction."""
    dataset = Dataset(name=name, config=config)
    session.add(dataset)
    session.flush()
    job = create_job(session, kind=JobKind.PREPARE, dataset_id=dataset.id)
    return dataset, job


def get_dataset(session: Session, *, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_datasets(
    session: Session, *, limit: int = 100, offset: int = 0
) -> tuple[Sequence[Dataset], int]:
    query = select(Dataset).options(selectinload(Dataset.prepare_jobs))
    return _page(session, query, limit=limit, offset=offset, order=Dataset.id.desc())


def dataset_job(session: Session, *, dataset_id: int) -> Job | None:
    """The newest job preparing this dataset."""
    return session.scalar(
        select(Job)
        .where(Job.dataset_id == dataset_id, Job.kind == JobKind.PREPARE)
        .order_by(Job.id.desc())
        .limit(1)
    )


def mark_dataset_prepared(
    session: Session, *, dataset_id: int, path: str, info: dict[str, Any]
) -> None:
    dataset = session.get(Dataset, dataset_id)
    dataset.path = path
    dataset.info = info
    dataset.updated_at = utcnow()


# --------------------------------------------------------------------------- training


def create_training_job(session: Session, *, dataset_id: int, settings: dict[str, Any]) -> Job:
    """`settings`: the run's TrainSettings as `to_dict` gives them; the worker reads them back."""
    return create_job(session, kind=JobKind.TRAIN, dataset_id=dataset_id, params=settings)


def record_model(
    session: Session,
    *,
    job_id: int,
    dataset_id: int,
    split: str,
    checkpoint_path: str,
    info: dict[str, Any],
    steps: int,
    final_loss: float | None,
    val_loss: float | None,
) -> Model:
    """The model a training job produced; one per job, so a re-run finds the same row."""
    model = session.scalar(select(Model).where(Model.job_id == job_id))
    if model is None:
        model = Model(job_id=job_id)
        session.add(model)
    model.dataset_id = dataset_id
    model.split = split
    model.checkpoint_path = checkpoint_path
    model.model_config = info["model_config"]
    model.training_config = info.get("training_config") or {}
    model.teacher = info["teacher"]["model"]
    model.tokenizer = info.get("tokenizer") or ""
    model.block_size = int(info["block_size"])
    model.hidden_size = int(info["hidden_size"])
    model.steps = steps
    model.final_loss = final_loss
    model.val_loss = val_loss
    session.flush()
    return model


def get_model(session: Session, *, model_id: int) -> Model | None:
    return session.get(Model, model_id)


def newest_model(session: Session) -> Model | None:
    return session.scalar(select(Model).order_by(Model.id.desc()).limit(1))


def list_models(
    session: Session, *, limit: int = 100, offset: int = 0
) -> tuple[Sequence[Model], int]:
    return _page(session, select(Model), limit=limit, offset=offset, order=Model.id.desc())


def model_of_job(session: Session, *, job_id: int) -> Model | None:
    return session.scalar(select(Model).where(Model.job_id == job_id))


def job_metrics(
    session: Session, *, job_id: int, after_step: int | None = None
) -> Sequence[JobMetric]:
    """A job's loss-curve points by step; with `after_step`, only the newer ones."""
    query = select(JobMetric).where(JobMetric.job_id == job_id)
    if after_step is not None:
        query = query.where(JobMetric.step > after_step)
    return session.scalars(query.order_by(JobMetric.step)).all()


# --------------------------------------------------------------------------- evaluations


def create_evaluation(
    session: Session, *, model_id: int, dataset_id: int, split: str, options: dict[str, Any]
) -> tuple[Evaluation, Job]:
    job = create_job(session, kind=JobKind.EVALUATE, dataset_id=dataset_id, params=options)
    evaluation = Evaluation(job_id=job.id, model_id=model_id, dataset_id=dataset_id, split=split)
    session.add(evaluation)
    session.flush()
    return evaluation, job


def get_evaluation(session: Session, *, evaluation_id: int) -> Evaluation | None:
    return session.get(Evaluation, evaluation_id)


def evaluation_of_job(session: Session, *, job_id: int) -> Evaluation | None:
    return session.scalar(select(Evaluation).where(Evaluation.job_id == job_id))


def list_evaluations(
    session: Session, *, model_id: int | None = None, limit: int = 100, offset: int = 0
) -> tuple[Sequence[Evaluation], int]:
    query = select(Evaluation).options(selectinload(Evaluation.job))
    if model_id is not None:
        query = query.where(Evaluation.model_id == model_id)
    return _page(session, query, limit=limit, offset=offset, order=Evaluation.id.desc())


def latest_evaluation(session: Session, *, model_id: int) -> Evaluation | None:
    """The newest finished evaluation of a model, else the newest one at all."""
    newest = (
        select(Evaluation).where(Evaluation.model_id == model_id).order_by(Evaluation.id.desc())
    )
    return session.scalar(
        newest.where(Evaluation.status == ProductStatus.READY).limit(1)
    ) or session.scalar(newest.limit(1))


def record_evaluation_report(session: Session, *, job_id: int, report: dict[str, Any]) -> None:
    evaluation = evaluation_of_job(session, job_id=job_id)
    evaluation.report = report


# --------------------------------------------------------------------------- memories


def create_memory(
    session: Session, *, model_id: int, name: str | None, tokens: int, blocks: int
) -> Memory:
    """A memory's row, in the caller's transaction; its artifact path follows from its id."""
    memory = Memory(model_id=model_id, name=name, path="", tokens=tokens, blocks=blocks)
    session.add(memory)
    session.flush()
    memory.path = memory_file(memory.id)
    return memory


def get_memory(session: Session, *, memory_id: int) -> Memory | None:
    return session.get(Memory, memory_id)


def list_memories(
    session: Session, *, model_id: int | None = None, limit: int = 100, offset: int = 0
) -> tuple[Sequence[Memory], int]:
    query = select(Memory).options(selectinload(Memory.model))
    if model_id is not None:
        query = query.where(Memory.model_id == model_id)
    return _page(session, query, limit=limit, offset=offset, order=Memory.id.desc())


def job_result(job: Job) -> dict[str, int | None]:
    """What a job made, as ids: its dataset, model or evaluation (relationships that list
    queries load up front, so a page of jobs costs a fixed number of queries)."""
    if job.kind in (JobKind.PREPARE, JobKind.PREPARE_PART):
        return {"dataset_id": job.dataset_id}
    if job.kind == JobKind.TRAIN:
        return {"model_id": job.model.id if job.model else None}
    return {"evaluation_id": job.evaluation.id if job.evaluation else None}


def get_job_status(session: Session, *, job_id: int) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def complete_loss_curve(
    session: Session,
    *,
    job_id: int,
    attempt: int,
    resumed_from_step: int | None,
    history: list[dict[str, Any]],
) -> None:
    """Add the points no run got to write (a killed run's last steps before it could flush
    them, which its resume checkpoint carried over) from the trainer's full history. Points
    up to the resume step are an earlier run's, and are labelled with the attempt before."""
    have = set(session.scalars(select(JobMetric.step).where(JobMetric.job_id == job_id)))
    resumed = resumed_from_step or 0
    missing = [
        JobMetric(
            job_id=job_id,
            step=int(point["step"]),
            loss=float(point["loss"]),
            val_loss=point.get("val_loss"),
            lr=point.get("lr"),
            attempt=attempt - 1 if int(point["step"]) <= resumed and attempt > 1 else attempt,
        )
        for point in history
        if int(point["step"]) not in have
    ]
    session.add_all(missing)
