"""The tasks: each takes a job id, runs the library function, and records the outcome.

They are thin and idempotent: a redelivered message for a job that already finished, or
that runs elsewhere with a live heartbeat, does nothing (see `claim_job`). The worker's
main process imports the library before its pool forks but never touches a device: CUDA
is first used inside the pool process that runs the task, which is where it must be.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_init
from sqlalchemy.orm import Session

from service.artifacts import (
    dataset_dir,
    evaluation_dir,
    job_dir,
    remove_resume_checkpoint,
    resume_checkpoint,
)
from service.db.engine import session_scope
from service.db.records import (
    complete_loss_curve,
    evaluation_of_job,
    get_dataset,
    get_model,
    mark_dataset_prepared,
    record_evaluation_report,
    record_model,
)
from service.queue import TASK_OF_KIND, JobKind
from service.settings import Settings, get_settings
from workers import metrics
from workers.runner import JobRun, Outcome, run_job


@worker_init.connect
def _import_library(**_) -> None:
    """Import the library (torch, transformers) once in the worker's main process, before
    the pool forks, so no task waits for the imports. Importing torch does not initialise
    CUDA and nothing here touches a device, so a forked child can still use the GPU."""
    import gistnet.data  # noqa: F401
    import gistnet.evaluate  # noqa: F401
    import gistnet.train  # noqa: F401


@worker_process_init.connect
def _limit_threads(**_) -> None:
    """In each pool process: torch's thread count, if the settings fix one."""
    from celery import current_app

    threads = (getattr(current_app, "settings", None) or get_settings()).torch_threads
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _settings_of(task) -> Settings:
    return getattr(task.app, "settings", None) or get_settings()


def _run_measured(task, job_id: int, kind: str, work: Callable[[JobRun], Outcome]) -> str:
    """run_job, with the worker's metrics told when a claimed job starts and ends."""

    def counted(run: JobRun) -> Outcome:  # called only once the job is claimed
        metrics.job_started(kind)
        return work(run)

    started = time.monotonic()
    outcome = run_job(settings=_settings_of(task), job_id=job_id, work=counted)
    if outcome != "skipped":
        metrics.job_finished(kind, outcome, time.monotonic() - started)
    return outcome


# --------------------------------------------------------------------------- prepare


def _prepare(run: JobRun) -> Outcome:
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    settings = run.settings
    with session_scope(settings.database_url) as session:
        config = dict(get_dataset(session, dataset_id=run.dataset_id).config)
    config["teacher_device"] = settings.device  # the worker's device, not the requester's
    relative = dataset_dir(run.dataset_id)
    output = settings.artifact_path(relative)
    meter = metrics.PrepMeter()

    def on_progress(p) -> None:
        meter(p.split, p.tokens)
        run.report(
            progress={
                "split": p.split,
                "documents": p.documents,
                "tokens": p.tokens,
                "examples": p.examples,
            }
        )

    metadata = prepare_dataset(
        validate_dataset_config(config),
        config_dir=settings.data_root.resolve(),
        output_dir=output,
        on_progress=on_progress,
        should_cancel=run.should_cancel,
    )
    # Shard paths relative to the dataset folder, as metadata.yaml has them.
    splits = {
        name: {**stats, "path": os.path.relpath(stats["path"], output)}
        for name, stats in metadata["splits"].items()
    }
    info = {**metadata, "splits": splits}

    def record(session: Session) -> None:
        mark_dataset_prepared(session, dataset_id=run.dataset_id, path=relative, info=info)

    return Outcome(record=record)


@shared_task(name=TASK_OF_KIND[JobKind.PREPARE], bind=True)
def prepare_dataset_task(self, job_id: int) -> str:
    return _run_measured(self, job_id, JobKind.PREPARE, _prepare)


# --------------------------------------------------------------------------- train


def _train(run: JobRun) -> Outcome:
    from gistnet.checkpoint import read_checkpoint_info
    from gistnet.config import validate_run_config
    from gistnet.train import train_gistnet

    settings = run.settings
    split = run.params["split"]
    raw: dict[str, Any] = copy.deepcopy(run.params["run_config"])
    raw.setdefault("training", {})["device"] = settings.device
    run_config = validate_run_config(raw)
    with session_scope(settings.database_url) as session:
        dataset = get_dataset(session, dataset_id=run.dataset_id)
        shard = settings.artifact_path(dataset.path) / dataset.info["splits"][split]["path"]
    relative = job_dir(run.job_id)
    output = settings.artifact_path(relative)
    output.mkdir(parents=True, exist_ok=True)

    def on_progress(p) -> None:
        metrics.train_step(
            batch_size=run_config.training.batch_size, examples_per_sec=p.examples_per_sec
        )
        point = {
            "step": p.step,
            "loss": p.loss,
            "running_loss": p.running_loss,
            "val_loss": p.val_loss,
            "lr": p.lr,
            "examples_per_sec": p.examples_per_sec,
        }
        # The objective's parts (kl, nll for substitution) ride along with the rest.
        extra = {"running_loss": p.running_loss, "lr": p.lr, **(getattr(p, "stats", None) or {})}
        if p.val_loss is not None:
            extra["val_loss"] = p.val_loss
        run.report(
            step=p.step,
            max_steps=p.max_steps,
            loss=p.loss,
            examples_per_sec=p.examples_per_sec,
            progress=extra,
            metric=point,
        )

    # A redelivered job finds the resume checkpoint of the run that died and continues it;
    # once the job has ended (succeeded, failed, cancelled) nothing will, and it goes.
    run.at_end(lambda: remove_resume_checkpoint(settings.artifact_root, run.job_id))
    result = train_gistnet(
        dataset_path=shard,
        run_config=run_config,
        output_dir=output,
        on_progress=on_progress,
        should_cancel=run.should_cancel,
        resume_path=settings.artifact_path(resume_checkpoint(run.job_id)),
        checkpoint_every=settings.resume_every,
    )
    info = read_checkpoint_info(result.checkpoint_path)
    checkpoint = os.path.relpath(result.checkpoint_path, settings.artifact_root.resolve())

    def record(session: Session) -> None:
        record_model(
            session,
            job_id=run.job_id,
            dataset_id=run.dataset_id,
            split=split,
            checkpoint_path=checkpoint,
            info=info,
            steps=result.steps,
            final_loss=_finite(result.final_loss),
            val_loss=_finite(result.val_loss),
        )
        complete_loss_curve(
            session,
            job_id=run.job_id,
            attempt=run.attempt,
            resumed_from_step=result.resumed_from_step,
            history=result.history,
        )

    return Outcome(record=record)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


@shared_task(name=TASK_OF_KIND[JobKind.TRAIN], bind=True)
def train_task(self, job_id: int) -> str:
    return _run_measured(self, job_id, JobKind.TRAIN, _train)


# --------------------------------------------------------------------------- evaluate


def _evaluate(run: JobRun) -> Outcome:
    from gistnet.evaluate import evaluate_gistnet

    settings = run.settings
    with session_scope(settings.database_url) as session:
        evaluation = evaluation_of_job(session, job_id=run.job_id)
        evaluation_id = evaluation.id
        model = get_model(session, model_id=evaluation.model_id)
        dataset = get_dataset(session, dataset_id=evaluation.dataset_id)
        checkpoint = settings.artifact_path(model.checkpoint_path)
        dataset_path = settings.artifact_path(dataset.path)
        split = evaluation.split

    def on_progress(done: int, total: int) -> None:
        run.report(
            step=done, max_steps=total, progress={"examples_scored": done, "examples": total}
        )

    report = evaluate_gistnet(
        checkpoint_path=checkpoint,
        dataset_path=dataset_path,
        split=split,
        device=settings.device,
        on_progress=on_progress,
        should_cancel=run.should_cancel,
        **run.params,
    )

    # The report as JSON and its per-position NLL plot, beside the other artifacts; the
    # recorded report names them relative to the artifact root.
    from gistnet.evaluate import write_report

    relative = evaluation_dir(evaluation_id)
    written = write_report(report, settings.artifact_path(relative), stem="report")
    report["files"] = {kind: f"{relative}/{path.name}" for kind, path in written.items()}

    def record(session: Session) -> None:
        record_evaluation_report(session, job_id=run.job_id, report=report)

    return Outcome(record=record)


@shared_task(name=TASK_OF_KIND[JobKind.EVALUATE], bind=True)
def evaluate_task(self, job_id: int) -> str:
    return _run_measured(self, job_id, JobKind.EVALUATE, _evaluate)
