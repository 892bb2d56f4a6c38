"""The tasks: each takes a job id, runs the library function, and records the outcome.

They are thin and idempotent: a redelivered message for a job that already finished, or
that runs elsewhere with a live heartbeat, does nothing (see `claim_job`). The worker's
main process imports the library before its pool forks but never touches a device: CUDA
is first used inside the pool process that runs the task, which is where it must be.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_init
from sqlalchemy import select
from sqlalchemy.orm import Session

from gistnet.errors import Cancelled, GistNetError
from service.artifacts import (
    dataset_dir,
    evaluation_dir,
)
from service.db.engine import session_scope
from service.db.jobs import create_parts, get_job, record_progress, take_over_parent
from service.db.models import Job
from service.db.parts import part_label
from service.db.records import (
    evaluation_of_job,
    get_dataset,
    get_model,
    mark_dataset_prepared,
    record_evaluation_report,
)
from service.queue import TASK_OF_KIND, JobKind, JobStatus, send_job
from service.settings import Settings, get_settings
from workers import metrics
from workers.runner import DETACHED, JobRun, Outcome, run_claimed, run_job, worker_name
from workers.training import open_dataset_split, train

# What a job does, in its log (GET /jobs/{id}/logs) as in the worker's.
log = logging.getLogger(__name__)


@worker_init.connect
def _import_library(**_) -> None:
    """Import the library (torch, transformers) once in the worker's main process, before
    the pool forks, so no task waits for the imports. Importing torch does not initialise
    CUDA and nothing here touches a device, so a forked child can still use the GPU."""
    import gistnet.data  # noqa: F401
    import gistnet.eval.run  # noqa: F401
    import gistnet.launch  # noqa: F401


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
    outcome = run_job(settings=_settings_of(task), job_id=job_id, work=counted, app=task.app)
    if outcome != "skipped":
        metrics.job_finished(kind, outcome, time.monotonic() - started)
    return outcome


# --------------------------------------------------------------------------- prepare


@contextlib.contextmanager
def _source_folder(
    settings: Settings, config: dict[str, Any], *, only: dict[str, Iterable[str]] | None = None
) -> Iterator[Path]:
    """The folder a dataset's relative `source` globs are read from: the data root itself
    when it is a folder; on an object store, a scratch folder holding the matched objects
    (exactly those, so the library's glob finds the same files the API's check did).
    `only` ({split: keys}) downloads just those: a part reads only the files of its range."""
    store = settings.data_store()
    if store.is_local:
        yield store.local_root
        return
    with tempfile.TemporaryDirectory(prefix="gistnet-sources-") as scratch:
        for name, split in config.get("splits", {}).items():
            if split.get("source"):
                # A URL under the data root becomes its relative form, as the API checked it.
                split["source"] = store.key_of(split["source"]) or split["source"]
                keys = store.glob(split["source"]) if only is None else only.get(name, ())
                for key in keys:
                    store.download(key, Path(scratch) / key)
        yield Path(scratch)


def _dataset_config(run: JobRun) -> dict[str, Any]:
    """The dataset's config as requested, on this worker's device."""
    with session_scope(run.settings.database_url) as session:
        config = copy.deepcopy(get_dataset(session, dataset_id=run.dataset_id).config)
    config["teacher_device"] = run.settings.device  # the worker's device, not the requester's
    return config


def _prepare(run: JobRun, *, app) -> Outcome:
    """A dataset's job: the whole preparation here, or, when a split has several shards,
    plan the parts, hand them to the `prep` queue and detach; later (taken over once the
    parts are done, or run again) check them and write the metadata."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset, relative_metadata

    settings = run.settings
    store = settings.artifact_store()
    config = _dataset_config(run)
    if "import" in config:
        return _import(run, config)
    relative = dataset_dir(run.dataset_id)
    if any(split.get("shards", 1) > 1 for split in config["splits"].values()):
        return _prepare_in_parts(run, config=config, relative=relative, app=app)
    log.info(
        "preparing dataset %s: splits %s, teacher %s on %s",
        run.dataset_id,
        ", ".join(config["splits"]),
        config.get("teacher_model"),
        settings.device,
    )
    with store.writing(relative) as output, _source_folder(settings, config) as sources:
        metadata = prepare_dataset(
            validate_dataset_config(config),
            config_dir=sources,
            output_dir=output,
            on_progress=_prep_progress(run),
            should_cancel=run.should_cancel,
            source_bounds=settings.source_bounds,
        )
        # Shards first, metadata.yaml last: a dataset folder with its metadata is complete.
        store.publish_folder(output, relative)
        # Shard paths relative to the dataset folder, as metadata.yaml has them.
        info = relative_metadata(metadata, output)
    return _dataset_ready(run, info=info, relative=relative)


def _prep_progress(run: JobRun, **where: str) -> Callable[[Any], None]:
    """The library's progress callback while a dataset (or a part, `where` naming its
    shard) is prepared: the worker's token meter and the job's progress fields."""
    meter = metrics.PrepMeter()

    def on_progress(p) -> None:
        meter(p.split, p.tokens)
        run.report(
            progress={
                "split": p.split,
                **where,
                "documents": p.documents,
                "tokens": p.tokens,
                "examples": p.examples,
            }
        )

    return on_progress


def _dataset_ready(run: JobRun, *, info: dict[str, Any], relative: str) -> Outcome:
    examples = ", ".join(f"{name} {s.get('examples')}" for name, s in info["splits"].items())
    log.info("dataset %s written to %s: examples %s", run.dataset_id, relative, examples)
    def record(session: Session) -> None:
        mark_dataset_prepared(session, dataset_id=run.dataset_id, path=relative, info=info)

    return Outcome(record=record)


def _import(run: JobRun, config: dict[str, Any]) -> Outcome:
    """A dataset another tool wrote (POST /datasets/import), copied under the artifact root
    by the library (gistnet/importing.py); metadata.yaml is published last."""
    from gistnet.importing import import_dataset, inspect_import, local_import_folder

    settings = run.settings
    data, store = settings.data_store(), settings.artifact_store()
    key = config["import"]["path"]
    relative = dataset_dir(run.dataset_id)
    source = inspect_import(data, key)
    with local_import_folder(data, source) as folder, store.writing(relative) as output:
        info = import_dataset(
            source,
            folder=folder,
            output_dir=output,
            dataset_name=config["dataset_name"],
            tokenizer=config["tokenizer"],
            teacher_model=config["teacher_model"],
            imported_from=key,
            on_progress=lambda progress: run.report(progress=progress),
            should_cancel=run.should_cancel,
        )
        # Shards first, metadata.yaml last: a dataset folder with its metadata is complete.
        store.publish_folder(output, relative)
    return _dataset_ready(run, info=info, relative=relative)


def _part_params(plan: dict[str, Any]) -> list[dict[str, Any]]:
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


def _prepare_in_parts(run: JobRun, *, config: dict[str, Any], relative: str, app) -> Outcome:
    from gistnet.config import validate_dataset_config
    from gistnet.data import plan_dataset

    settings = run.settings
    plan = run.params.get("plan")
    if plan is None:  # the first run: counts every source's documents, hashes every input
        run.report(progress={"stage": "planning"})
        with _source_folder(settings, config) as sources:
            plan = plan_dataset(
                validate_dataset_config(config),
                config_dir=sources,
                source_bounds=settings.source_bounds,
            )
    with session_scope(settings.database_url) as session:
        parts = create_parts(
            session, parent_id=run.job_id, attempt=run.attempt, plan=plan, parts=_part_params(plan)
        )
        states = [(p.id, p.status, p.error, part_label(p)) for p in parts]
    failed = [s for s in states if s[1] == JobStatus.FAILED]
    if failed:
        raise PartFailed(f"{failed[0][3]} failed: {failed[0][2]}")
    if any(s[1] == JobStatus.CANCELLED for s in states):
        raise Cancelled("a part of the dataset was cancelled")
    if all(s[1] == JobStatus.SUCCEEDED for s in states):
        run.report(progress={"stage": "finalizing", "parts": len(states)})
        return _finalize(run, config=config, plan=plan, relative=relative)
    # After the commit, so each part finds its row. A rerun sends the queued ones again:
    # a part already taken ignores the extra message (see claim_job).
    for part_id, status, _, _ in states:
        if status == JobStatus.QUEUED:
            send_job(app, job_id=part_id, kind=JobKind.PREPARE_PART)
    run.report(progress={"stage": "parts", "parts": len(states)})
    return Outcome(detach=True)


def _finalize(run: JobRun, *, config: dict[str, Any], plan: dict[str, Any], relative: str):
    """Every part checked against its manifest, then metadata.yaml written (and published
    last, on an object store, after fetching the parts to check them)."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import PARTS_DIR, finalize_dataset, relative_metadata

    store = run.settings.artifact_store()
    with store.writing(relative) as output:
        if not store.is_local:
            for params in _part_params(plan):
                shard = params["shard"]
                store.download(f"{relative}/{shard}", output / shard)
                store.download(
                    f"{relative}/{PARTS_DIR}/{shard}.json", output / PARTS_DIR / f"{shard}.json"
                )
        metadata = finalize_dataset(validate_dataset_config(config), plan=plan, output_dir=output)
        if not store.is_local:
            store.publish(output / "metadata.yaml", f"{relative}/metadata.yaml")
        info = relative_metadata(metadata, output)
    return _dataset_ready(run, info=info, relative=relative)


class PartFailed(GistNetError):
    """A part of a dataset failed, after its attempts: the dataset fails with its reason."""


_RESOURCES: dict[tuple, Any] = {}


def _prep_resources(config):
    """Tokenizer and teacher, loaded once per worker process while its parts share them."""
    from gistnet.examples import load_prep_resources

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
    """One part of a dataset: its shard and manifest, from its range of documents (on an
    object store: only the source files of that range are fetched, and the shard then its
    manifest are published)."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import PARTS_DIR, prepare_part, resolve_dataset_config
    from gistnet.sources import files_in_range

    settings = run.settings
    store = settings.artifact_store()
    raw = _dataset_config(run)
    with session_scope(settings.database_url) as session:
        plan = get_job(session, job_id=run.parent_id).params["plan"]
    split, index, shard = run.params["split"], run.params["index"], run.params["shard"]
    part = plan["splits"][split]["parts"][index]
    relative = dataset_dir(run.dataset_id)
    shard_key, manifest_key = f"{relative}/{shard}", f"{relative}/{PARTS_DIR}/{shard}.json"
    counts = plan["splits"][split]["files"]
    needed = (
        None if counts is None else {split: files_in_range(counts, part["start"], part["stop"])}
    )
    with store.writing(relative) as output, _source_folder(settings, raw, only=needed) as sources:
        # What an earlier run of this part published, so that a verified one is kept.
        if not store.is_local and store.download(
            manifest_key, output / PARTS_DIR / f"{shard}.json"
        ):
            store.download(shard_key, output / shard)
        config, _ = resolve_dataset_config(validate_dataset_config(raw), sources)
        manifest = prepare_part(
            config,
            plan=plan,
            split=split,
            index=index,
            config_dir=sources,
            output_dir=output,
            resources=_prep_resources(config),
            on_progress=_prep_progress(run, shard=shard),
            should_cancel=run.should_cancel,
            source_bounds=settings.source_bounds,
        )
        if not store.is_local and not manifest.get("reused"):
            # The shard first: a manifest in the store vouches for a shard that is there.
            store.publish(output / shard, shard_key)
            store.publish(output / PARTS_DIR / f"{shard}.json", manifest_key)
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


def _finish_parent_if_done(task, parent_id: int) -> str | None:
    """After a part (or the dataset's job itself) ended: if every part has finished and the
    dataset's job waits detached, take it over here and finish it. Many may try; one gets it."""
    settings = _settings_of(task)
    with session_scope(settings.database_url) as session:
        parent = take_over_parent(
            session, job_id=parent_id, worker=worker_name(), device=settings.device
        )
        if parent is None:
            return None
        run = JobRun(settings=settings, job=parent)
    return run_claimed(run, work=partial(_prepare, app=task.app), app=task.app)


@shared_task(name=TASK_OF_KIND[JobKind.PREPARE], bind=True)
def prepare_dataset_task(self, job_id: int) -> str:
    outcome = _run_measured(self, job_id, JobKind.PREPARE, partial(_prepare, app=self.app))
    if outcome == DETACHED:  # the parts may all have finished while it sent them
        outcome = _finish_parent_if_done(self, job_id) or outcome
    return outcome


@shared_task(name=TASK_OF_KIND[JobKind.PREPARE_PART], bind=True)
def prepare_part_task(self, job_id: int) -> str:
    outcome = _run_measured(self, job_id, JobKind.PREPARE_PART, _prepare_part)
    with session_scope(_settings_of(self).database_url) as session:
        parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is not None:
        _finish_parent_if_done(self, parent_id)
    return outcome


# --------------------------------------------------------------------------- train


@shared_task(name=TASK_OF_KIND[JobKind.TRAIN], bind=True)
def train_task(self, job_id: int) -> str:
    return _run_measured(self, job_id, JobKind.TRAIN, train)


# --------------------------------------------------------------------------- evaluate


def _evaluate(run: JobRun) -> Outcome:
    from gistnet.eval.report import write_report
    from gistnet.eval.request import EvalRequest, EvalSettings
    from gistnet.eval.run import evaluate_gistnet

    settings = run.settings
    store = settings.artifact_store()
    with session_scope(settings.database_url) as session:
        evaluation = evaluation_of_job(session, job_id=run.job_id)
        model = get_model(session, model_id=evaluation.model_id)
        dataset = get_dataset(session, dataset_id=evaluation.dataset_id)
        checkpoint = store.open_local(model.checkpoint_path)
        training_job = model.job_id
        split = evaluation.split
        dataset_path = open_dataset_split(store, dataset, split)
        relative = evaluation_dir(evaluation.id)
        log.info("evaluating model %s on dataset %s split %r", model.id, dataset.id, split)

    def on_progress(done: int, total: int) -> None:
        run.report(
            step=done, max_steps=total, progress={"examples_scored": done, "examples": total}
        )

    request = EvalRequest(
        checkpoint=checkpoint,
        dataset=dataset_path,
        split=split,
        settings=EvalSettings.from_dict(run.params),  # as the API stored them
        device=settings.device,
    )
    report = evaluate_gistnet(request, on_progress=on_progress, should_cancel=run.should_cancel)
    # The report as JSON and its per-position NLL plot, beside the other artifacts; the
    # recorded report names them relative to the artifact root.
    with store.writing(relative) as output:
        written = write_report(report, output, stem="report")
        store.publish_folder(output, relative)
        _log_to_training_run(run, training_job, report, list(written.values()))
    report["files"] = {kind: f"{relative}/{path.name}" for kind, path in written.items()}

    def record(session: Session) -> None:
        record_evaluation_report(session, job_id=run.job_id, report=report)

    return Outcome(record=record)


def _log_to_training_run(run: JobRun, training_job: int, report: dict, files: list[Path]) -> None:
    """The report into the MLflow run of the model's training, when that run was tracked
    there; a tracking server that is away costs the evaluation nothing but this log."""
    uri = run.settings.mlflow_tracking_uri
    with session_scope(run.settings.database_url) as session:
        training = get_job(session, job_id=training_job)
        asked = ((training.params if training is not None else None) or {}).get("tracking") or {}
    if uri is None or not asked.get("mlflow"):
        return
    from gistnet.tracking import log_evaluation

    try:
        found = log_evaluation(
            uri, report=report, files=files, tags={"gistnet.job_id": str(training_job)}
        )
    except Exception as err:  # the report is recorded either way
        log.warning("the report could not be logged to MLflow: %s", err)
        return
    if found is None:
        log.warning("no MLflow run of training job %s: the report is not logged", training_job)


@shared_task(name=TASK_OF_KIND[JobKind.EVALUATE], bind=True)
def evaluate_task(self, job_id: int) -> str:
    return _run_measured(self, job_id, JobKind.EVALUATE, _evaluate)
