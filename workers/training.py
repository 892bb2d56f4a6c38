"""The training task's work: a dataset split, its run as the API stored it, and what the
run is logged to; the checkpoint and the model's folder published (jobs/<id>/gistnet.pt,
jobs/<id>/gistnet/) and the model recorded."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.artifacts import job_dir, remove_resume_checkpoint, resume_checkpoint
from service.db.engine import session_scope
from service.db.records import complete_loss_curve, get_dataset, record_model
from workers import metrics
from workers.runner import JobRun, Outcome

log = logging.getLogger(__name__)


def open_dataset_split(store, dataset, split: str) -> Path:
    """The dataset's folder with the split's shards, metadata.yaml and the validation
    shards in it (training scores validation): the folder itself on a local root, the
    cache's copy of it on an object store (the cache mirrors the store's layout)."""
    splits = dataset.info["splits"]
    folder = store.open_local(f"{dataset.path}/metadata.yaml").parent
    for name in {split, "validation"} & set(splits):
        for shard in splits[name].get("shards") or [splits[name]]:
            store.open_local(f"{dataset.path}/{shard['path']}")
    return folder


def _train_progress(run: JobRun, *, batch_size: int) -> Callable[[Any], None]:
    """Each step's progress into the job row, its loss curve and the worker's metrics."""

    def on_progress(p) -> None:
        metrics.train_step(batch_size=batch_size)
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

    return on_progress


def _tracking(run: JobRun, train_settings, output: Path):
    """The trackers the request asked for: TensorBoard in the job's folder, MLflow on the
    server's tracking URI (the API refused mlflow without one)."""
    from gistnet.tracking import Tracking, TrackingSettings

    asked = train_settings.tracking or {}
    where = TrackingSettings(
        tensorboard=str(output / "tensorboard") if asked.get("tensorboard") else None,
        mlflow=run.settings.mlflow_tracking_uri if asked.get("mlflow") else None,
        experiment=asked.get("experiment") or "gistnet",
        run_name=asked.get("run_name") or f"job-{run.job_id}",
        # The model's evaluations find the run by it (workers.tasks._evaluate).
        tags={"gistnet.job_id": str(run.job_id)},
    )
    return Tracking(where, params=train_settings.run.model_dump(mode="json"))


def train(run: JobRun) -> Outcome:
    from gistnet.checkpoint import read_checkpoint_info
    from gistnet.launch import launch_training
    from gistnet.pretrained import CONFIG_NAME
    from gistnet.train import CHECKPOINT_NAME, PRETRAINED_NAME
    from gistnet.train_request import TrainRequest, TrainSettings

    settings = run.settings
    store = settings.artifact_store()
    # As the API stored them, on this worker's device.
    train_settings = TrainSettings.from_dict(run.params).with_training(device=settings.device)
    split = train_settings.split
    with session_scope(settings.database_url) as session:
        folder = open_dataset_split(store, get_dataset(session, dataset_id=run.dataset_id), split)
    relative = job_dir(run.job_id)
    resume_key = resume_checkpoint(run.job_id)

    on_progress = _train_progress(run, batch_size=train_settings.run.training.batch_size)

    log.info(
        "training on dataset %s split %r for %s steps on %s",
        run.dataset_id,
        split,
        train_settings.run.training.max_steps,
        settings.device,
    )
    # Once the job has ended (succeeded, failed, cancelled) nothing will resume it.
    run.at_end(lambda: remove_resume_checkpoint(store, run.job_id))
    with store.writing(relative) as output:
        # A redelivered job finds the resume checkpoint of the run that died (on this
        # machine or another: it is published to the store) and continues it.
        resume = output / "resume.pt"
        store.download(resume_key, resume)
        request = TrainRequest(
            dataset=folder,
            output_dir=output,
            settings=train_settings,
            resume_path=resume,
            checkpoint_every=settings.resume_every,
        )
        tracking = _tracking(run, train_settings, output)

        def progress(p) -> None:
            on_progress(p)
            tracking.progress(p)

        with tracking:
            result = launch_training(
                request,
                on_progress=progress,
                should_cancel=run.should_cancel,
                on_checkpoint=lambda path: store.publish(path, resume_key),
            )
            tracking.log_artifacts(result.checkpoint_path)
        checkpoint = f"{relative}/{CHECKPOINT_NAME}"
        store.publish(result.checkpoint_path, checkpoint)
        # The same model as a folder, in the job's folder beside it (a DELETE of the model
        # removes that folder); config.json last, so whoever finds it finds the weights.
        store.publish_folder(
            result.pretrained_path, f"{relative}/{PRETRAINED_NAME}", last=(CONFIG_NAME,)
        )
        if tracking.settings.tensorboard is not None and not store.is_local:
            store.publish_folder(tracking.settings.tensorboard, f"{relative}/tensorboard")
        info = read_checkpoint_info(result.checkpoint_path)
    log.info(
        "checkpoint %s written: %s steps, final loss %s, validation loss %s",
        checkpoint,
        result.steps,
        result.final_loss,
        result.val_loss,
    )

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
