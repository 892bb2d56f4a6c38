"""Rows to response schemas.

Built from a row and its relationships only; the list queries load those relationships
with the page (`selectinload`), so a page costs a fixed number of queries, not one per row.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas import (
    DatasetPublic,
    EvaluationPublic,
    EvaluationSummary,
    JobError,
    JobProgress,
    JobPublic,
    ModelPublic,
    SplitPublic,
)
from service.db.models import Dataset, Evaluation, Job, Model
from service.db.records import job_result, latest_evaluation


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        queue=job.queue,
        dataset_id=job.dataset_id,
        progress=JobProgress(
            step=job.step,
            max_steps=job.max_steps,
            loss=job.loss,
            examples_per_sec=job.examples_per_sec,
            detail=job.progress,
        ),
        attempt=job.attempt,
        worker=job.worker,
        device=job.device,
        cancel_requested=job.cancel_requested,
        error=JobError(message=job.error, type=job.error_type) if job.error else None,
        sends=job.sends,
        sent_at=job.sent_at,
        result=job_result(job),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
    )


def dataset_public(dataset: Dataset) -> DatasetPublic:
    info = dataset.info or {}
    config = dataset.config
    job = dataset.prepare_jobs[0] if dataset.prepare_jobs else None
    splits = {}
    for name, stats in (info.get("splits") or {}).items():
        splits[name] = SplitPublic(**{**stats, "path": f"{dataset.path}/{stats['path']}"})
    sources = {}
    for name, split in (config.get("splits") or {}).items():
        if split.get("source"):
            sources[name] = split["source"]
        else:
            sources[name] = f"{len(split.get('documents') or [])} inline documents"
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        status=dataset.status,
        error=dataset.error,
        job_id=job.id if job else None,
        job_status=job.status if job else None,
        tokenizer=config.get("tokenizer", ""),
        teacher_model=config.get("teacher_model", ""),
        block_size=config.get("block_size", info.get("block_size", 32)),
        horizon=config.get("horizon", info.get("horizon", 64)),
        teacher_hidden_size=info.get("teacher_hidden_size"),
        vocab_size=info.get("vocab_size"),
        fingerprint=info.get("fingerprint"),
        path=dataset.path,
        splits=splits,
        sources=sources,
        created_at=dataset.created_at,
        updated_at=dataset.updated_at,
    )


def evaluation_public(evaluation: Evaluation) -> EvaluationPublic:
    return EvaluationPublic(
        id=evaluation.id,
        job_id=evaluation.job_id,
        model_id=evaluation.model_id,
        dataset_id=evaluation.dataset_id,
        split=evaluation.split,
        status=evaluation.status,
        job_status=evaluation.job.status if evaluation.job else None,
        error=evaluation.error,
        report=evaluation.report,
        created_at=evaluation.created_at,
        finished_at=evaluation.finished_at,
    )


def model_public(session: Session, model: Model, *, with_evaluation: bool = False) -> ModelPublic:
    latest = latest_evaluation(session, model_id=model.id) if with_evaluation else None
    return ModelPublic(
        id=model.id,
        job_id=model.job_id,
        dataset_id=model.dataset_id,
        split=model.split,
        checkpoint_path=model.checkpoint_path,
        gistnet_config=model.model_config,
        training_config=model.training_config,
        teacher=model.teacher,
        tokenizer=model.tokenizer,
        block_size=model.block_size,
        hidden_size=model.hidden_size,
        steps=model.steps,
        final_loss=model.final_loss,
        val_loss=model.val_loss,
        created_at=model.created_at,
        latest_evaluation=EvaluationSummary.model_validate(latest) if latest else None,
    )
