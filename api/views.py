"""Rows to response schemas.

Built from a row and its relationships only; the list queries load those relationships
with the page (`selectinload`), so a page costs a fixed number of queries, not one per row.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from api.context_schemas import MemoryPublic
from api.schemas import (
    DatasetPublic,
    EvaluationPublic,
    EvaluationSummary,
    JobError,
    JobPartPublic,
    JobProgress,
    JobPublic,
    ModelPublic,
    PartsPublic,
    SplitPublic,
)
from service.db.models import Dataset, Evaluation, Job, Memory, Model
from service.db.records import job_result, latest_evaluation


def parts_public(parts: Sequence[Job]) -> PartsPublic:
    by_status: dict[str, int] = {}
    for part in parts:
        by_status[part.status] = by_status.get(part.status, 0) + 1
    return PartsPublic(
        total=len(parts),
        by_status=by_status,
        examples=sum(int((p.progress or {}).get("examples") or 0) for p in parts),
        data=[
            JobPartPublic(
                job_id=p.id,
                index=p.part_index,
                split=(p.params or {}).get("split"),
                shard=(p.params or {}).get("shard"),
                status=p.status,
                attempt=p.attempt,
                worker=p.worker,
                detail=p.progress,
                error=JobError(message=p.error, type=p.error_type) if p.error else None,
                heartbeat_at=p.heartbeat_at,
                finished_at=p.finished_at,
            )
            for p in parts
        ],
    )


def job_public(job: Job, *, parts: Sequence[Job] | None = None) -> JobPublic:
    """`parts`: a parent's parts, shown on the single-job view (lists leave them out)."""
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        queue=job.queue,
        dataset_id=job.dataset_id,
        parent_id=job.parent_id,
        part_index=job.part_index,
        part_count=job.part_count,
        parts=parts_public(parts) if parts else None,
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


def dataset_public(dataset: Dataset, *, parts: Sequence[Job] | None = None) -> DatasetPublic:
    """`parts`: the parts of its job, shown on the single-dataset view."""
    info = dataset.info or {}
    config = dataset.config
    job = dataset.prepare_jobs[0] if dataset.prepare_jobs else None
    splits = {}
    for name, stats in (info.get("splits") or {}).items():
        shards = stats.get("shards")
        if shards:
            shards = [{**s, "path": f"{dataset.path}/{s['path']}"} for s in shards]
        splits[name] = SplitPublic(
            **{**stats, "path": f"{dataset.path}/{stats['path']}", "shards": shards}
        )
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
        teacher_states=config.get("teacher_states", info.get("teacher_states", "cache")),
        block_size=config.get("block_size", info.get("block_size", 32)),
        horizon=config.get("horizon", info.get("horizon", 64)),
        stride=config.get("stride")
        or info.get("stride")
        or config.get("block_size", info.get("block_size", 32)),
        teacher_hidden_size=info.get("teacher_hidden_size"),
        vocab_size=info.get("vocab_size"),
        fingerprint=info.get("fingerprint"),
        path=dataset.path,
        splits=splits,
        sources=sources,
        created_at=dataset.created_at,
        updated_at=dataset.updated_at,
        parts=parts_public(parts) if parts else None,
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


def memory_public(memory: Memory) -> MemoryPublic:
    model = memory.model
    tail = memory.tokens - memory.blocks * model.block_size
    gists_per_block = int((model.model_config or {}).get("gists_per_block") or 1)
    return MemoryPublic(
        id=memory.id,
        model_id=memory.model_id,
        name=memory.name,
        tokens=memory.tokens,
        blocks=memory.blocks,
        tail_tokens=tail,
        context_length=memory.blocks * gists_per_block + tail,
        path=memory.path,
        created_at=memory.created_at,
    )
