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
from functools import partial
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_init
from sqlalchemy import select
from sqlalchemy.orm import Session

from gistnet.errors import Cancelled, GistNetError
from service.db.engine import session_scope
from service.db.jobs import create_parts, get_job, part_label, record_progress, take_over_parent
from service.db.models import Job
from service.db.records import (
    complete_loss_curve,
    evaluation_of_job,
    get_dataset,
    get_model,
    mark_dataset_prepared,
    record_evaluation_report,
    record_model,
)
from service.queue import TASK_OF_KIND, JobKind, JobStatus, send_job
from service.settings import Settings, get_settings
from workers.runner import DETACHED, JobRun, Outcome, run_claimed, run_job, worker_name


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


def dataset_dir(dataset_id: int) -> str:
    return f"datasets/{dataset_id}"


def job_dir(job_id: int) -> str:
    return f"jobs/{job_id}"


# --------------------------------------------------------------------------- prepare


def _dataset_config(run: JobRun):
    """The dataset's config as validated, on this worker's device."""
    from gistnet.config import validate_dataset_config

    with session_scope(run.settings.database_url) as session:
        config = dict(get_dataset(session, dataset_id=run.dataset_id).config)
    config["teacher_device"] = run.settings.device  # the worker's device, not the requester's
    return validate_dataset_config(config)


def _prepare(run: JobRun, *, app) -> Outcome:
    """A dataset's job: the whole preparation here, or, when a split has several shards,
    plan the parts, hand them to the `prep` queue and detach; later (taken over once the
    parts are done, or re-run) check them and write the metadata."""
    from gistnet.data import prepare_dataset, relative_metadata

    settings = run.settings
    config = _dataset_config(run)
    relative = dataset_dir(run.dataset_id)
    output = settings.artifact_path(relative)
    if any(split.shards > 1 for split in config.splits.values()):
        return _prepare_in_parts(run, config=config, output=output, relative=relative, app=app)

    def on_progress(p) -> None:
        run.report(
            progress={
                "split": p.split,
                "documents": p.documents,
                "tokens": p.tokens,
                "examples": p.examples,
            }
        )

    metadata = prepare_dataset(
        config,
        config_dir=settings.data_root.resolve(),
        output_dir=output,
        on_progress=on_progress,
        should_cancel=run.should_cancel,
    )
    return _dataset_ready(run, info=relative_metadata(metadata, output), relative=relative)


def _dataset_ready(run: JobRun, *, info: dict[str, Any], relative: str) -> Outcome:
    # Shard paths relative to the dataset folder, as metadata.yaml has them.
    def record(session: Session) -> None:
        mark_dataset_prepared(session, dataset_id=run.dataset_id, path=relative, info=info)

    return Outcome(record=record)


def _part_params(plan: dict[str, Any], config) -> list[dict[str, Any]]:
    from gistnet.data import plan_parts
    from gistnet.shards import shard_file_name

    return [
        {
            "split": part["split"],
            "index": part["index"],
            "count": part["count"],
            "shard": shard_file_name(part["split"], part["index"], part["count"]),
            "documents": None if part["stop"] is None else part["stop"] - part["start"],
        }
        for part in plan_parts(plan)
    ]


def _prepare_in_parts(run: JobRun, *, config, output, relative: str, app) -> Outcome:
    from gistnet.data import finalize_dataset, plan_dataset, relative_metadata

    settings = run.settings
    plan = run.params.get("plan")
    if plan is None:  # the first run: counts every source's documents, hashes every input
        run.report(progress={"stage": "planning"})
        plan = plan_dataset(config, config_dir=settings.data_root.resolve())
    with session_scope(settings.database_url) as session:
        parts = create_parts(
            session,
            parent_id=run.job_id,
            attempt=run.attempt,
            plan=plan,
            parts=_part_params(plan, config),
        )
        states = [(p.id, p.status, p.error, part_label(p)) for p in parts]
    failed = [s for s in states if s[1] == JobStatus.FAILED]
    if failed:
        raise PartFailed(f"{failed[0][3]} failed: {failed[0][2]}")
    if any(s[1] == JobStatus.CANCELLED for s in states):
        raise Cancelled("a part of the dataset was cancelled")
    if all(s[1] == JobStatus.SUCCEEDED for s in states):
        run.report(progress={"stage": "finalizing", "parts": len(states)})
        metadata = finalize_dataset(
            config, plan=plan, config_dir=settings.data_root.resolve(), output_dir=output
        )
        return _dataset_ready(run, info=relative_metadata(metadata, output), relative=relative)
    # After the commit, so each part finds its row. A rerun sends the queued ones again:
    # a part already taken ignores the extra message (see claim_job).
    for part_id, status, _, _ in states:
        if status == JobStatus.QUEUED:
            send_job(app, job_id=part_id, kind=JobKind.PREPARE_PART)
    run.report(progress={"stage": "parts", "parts": len(states)})
    return Outcome(detach=True)


class PartFailed(GistNetError):
    """A part of a dataset failed, after its attempts: the dataset fails with its reason."""


_RESOURCES: dict[tuple, Any] = {}


def _prep_resources(config):
    """Tokenizer and teacher, loaded once per worker process while its parts share them."""
    from gistnet.data import load_prep_resources

    key = (
        config.tokenizer,
        config.teacher_model,
        config.teacher_dtype,
        config.teacher_device,
        config.teacher_states,
    )
    if key not in _RESOURCES:
        _RESOURCES.clear()  # one teacher at a time: two would double the memory
        _RESOURCES[key] = load_prep_resources(config)
    return _RESOURCES[key]


def _prepare_part(run: JobRun) -> Outcome:
    """One part of a dataset: its shard and manifest, from its range of documents."""
    from gistnet.data import prepare_part, resolve_dataset_config

    settings = run.settings
    config, _ = resolve_dataset_config(_dataset_config(run), settings.data_root.resolve())
    with session_scope(settings.database_url) as session:
        plan = get_job(session, job_id=run.parent_id).params["plan"]
    split, index = run.params["split"], run.params["index"]

    def on_progress(p) -> None:
        run.report(
            progress={
                "split": p.split,
                "shard": run.params.get("shard"),
                "documents": p.documents,
                "tokens": p.tokens,
                "examples": p.examples,
            }
        )

    manifest = prepare_part(
        config,
        plan=plan,
        split=split,
        index=index,
        config_dir=settings.data_root.resolve(),
        output_dir=settings.artifact_path(dataset_dir(run.dataset_id)),
        resources=_prep_resources(config),
        on_progress=on_progress,
        should_cancel=run.should_cancel,
    )
    summary = {
        "split": split,
        "shard": manifest["path"],
        **{k: manifest[k] for k in ("documents", "tokens", "examples", "bytes", "sha256")},
        # A redelivered part whose shard was complete and verified was not written again.
        "reused": bool(manifest.get("reused")),
    }

    def record(session: Session) -> None:
        record_progress(session, job_id=run.job_id, attempt=run.attempt, progress=summary)

    return Outcome(record=record)


def _finish_parent_if_done(settings: Settings, app, parent_id: int) -> str | None:
    """After a part (or the parent's own run) ended: if every part has finished and the
    parent waits detached, take it over here and finish it. Many may try; one gets it."""
    with session_scope(settings.database_url) as session:
        parent = take_over_parent(
            session, job_id=parent_id, worker=worker_name(), device=settings.device
        )
        if parent is None:
            return None
        run = JobRun(settings=settings, job=parent)
    return run_claimed(run, work=partial(_prepare, app=app))


@shared_task(name=TASK_OF_KIND[JobKind.PREPARE], bind=True)
def prepare_dataset_task(self, job_id: int) -> str:
    settings = _settings_of(self)
    outcome = run_job(settings=settings, job_id=job_id, work=partial(_prepare, app=self.app))
    if outcome == DETACHED:  # the parts may all have finished while it sent them
        outcome = _finish_parent_if_done(settings, self.app, job_id) or outcome
    return outcome


@shared_task(name=TASK_OF_KIND[JobKind.PREPARE_PART], bind=True)
def prepare_part_task(self, job_id: int) -> str:
    settings = _settings_of(self)
    outcome = run_job(settings=settings, job_id=job_id, work=_prepare_part)
    with session_scope(settings.database_url) as session:
        parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is not None:
        _finish_parent_if_done(settings, self.app, parent_id)
    return outcome


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
        dataset_path = settings.artifact_path(dataset.path)
    relative = job_dir(run.job_id)
    output = settings.artifact_path(relative)
    output.mkdir(parents=True, exist_ok=True)

    def on_progress(p) -> None:
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

    # A redelivered job finds the resume checkpoint of the run that died and continues it.
    result = train_gistnet(
        dataset_path=dataset_path,
        split=split,
        run_config=run_config,
        output_dir=output,
        on_progress=on_progress,
        should_cancel=run.should_cancel,
        resume_path=output / "resume.pt",
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

    return Outcome(record=record, cleanup=lambda: (output / "resume.pt").unlink(missing_ok=True))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


@shared_task(name=TASK_OF_KIND[JobKind.TRAIN], bind=True)
def train_task(self, job_id: int) -> str:
    return run_job(settings=_settings_of(self), job_id=job_id, work=_train)


# --------------------------------------------------------------------------- evaluate


def _evaluate(run: JobRun) -> Outcome:
    from gistnet.evaluate import evaluate_gistnet

    settings = run.settings
    with session_scope(settings.database_url) as session:
        evaluation = evaluation_of_job(session, job_id=run.job_id)
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

    def record(session: Session) -> None:
        record_evaluation_report(session, job_id=run.job_id, report=report)

    return Outcome(record=record)


@shared_task(name=TASK_OF_KIND[JobKind.EVALUATE], bind=True)
def evaluate_task(self, job_id: int) -> str:
    return run_job(settings=_settings_of(self), job_id=job_id, work=_evaluate)
