"""Deleting a dataset or a model: its rows, and the artifact folders they name.

A deletion is refused while a job still works on what it would remove, and a dataset that
models were trained on is refused until they are deleted (a model's record names its
dataset). The rows go in one transaction; the caller removes the folders after the
commit, so a failed commit loses no file. A dataset folder whose removal fails then is an
orphan that the recovery sweep removes (`service.db.recovery.datasets_to_clean`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.artifacts import dataset_dir, evaluation_dir, job_dir, memory_dir
from service.db.models import Dataset, Evaluation, Job, Memory, Model
from service.queue import TERMINAL


class InUse(Exception):
    """What a deletion would remove is still used; the message says by what and what to do."""


@dataclass
class Removed:
    """What a deletion took out of the database: the artifact folders to remove now."""

    folders: list[str] = field(default_factory=list)


def _working_jobs(session: Session, *conditions) -> list[int]:
    return list(
        session.scalars(
            select(Job.id).where(*conditions, Job.status.not_in(list(TERMINAL))).order_by(Job.id)
        )
    )


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _remove_evaluations(session: Session, evaluations: list[Evaluation], removed: Removed) -> None:
    removed.folders += [evaluation_dir(e.id) for e in evaluations]
    if evaluations:
        ids = [e.id for e in evaluations]
        job_ids = [e.job_id for e in evaluations]
        session.execute(delete(Evaluation).where(Evaluation.id.in_(ids)))
        session.execute(delete(Job).where(Job.id.in_(job_ids)))


def delete_model(session: Session, model: Model) -> Removed:
    """The model, its training job (with its loss curve and checkpoint folder), its
    evaluations and its memories (gists no other model can read). Refused while one of
    its evaluations runs or waits to."""
    evaluations = list(session.scalars(select(Evaluation).where(Evaluation.model_id == model.id)))
    working = _working_jobs(session, Job.id.in_([e.job_id for e in evaluations]))
    if working:
        raise InUse(
            f"model {model.id} is being evaluated by job {_ids(working)}: wait for it to "
            f"finish or cancel it (POST /jobs/{{id}}/cancel), then delete the model"
        )
    removed = Removed()
    _remove_evaluations(session, evaluations, removed)
    removed.folders.append(job_dir(model.job_id))
    memories = list(session.scalars(select(Memory.id).where(Memory.model_id == model.id)))
    removed.folders += [memory_dir(memory_id) for memory_id in memories]
    session.execute(delete(Memory).where(Memory.model_id == model.id))
    session.execute(delete(Model).where(Model.id == model.id))
    session.execute(delete(Job).where(Job.id == model.job_id))
    return removed


def delete_dataset(session: Session, dataset: Dataset) -> Removed:
    """The dataset, its jobs (preparation, parts, training runs that made no model) and
    the evaluations measured on it, with their folders. Refused while a job works on it,
    and while models trained on it exist."""
    # Held until the commit (on PostgreSQL): a job queued on the dataset meanwhile waits.
    session.execute(select(Dataset.id).where(Dataset.id == dataset.id).with_for_update())
    working = _working_jobs(session, Job.dataset_id == dataset.id)
    if working:
        raise InUse(
            f"dataset {dataset.id} is in use by job {_ids(working)}: wait for it to finish "
            f"or cancel it (POST /jobs/{{id}}/cancel), then delete the dataset"
        )
    models = list(
        session.scalars(select(Model.id).where(Model.dataset_id == dataset.id).order_by(Model.id))
    )
    if models:
        raise InUse(
            f"dataset {dataset.id} has models trained on it ({_ids(models)}): delete them "
            f"first (DELETE /models/{{id}}); a model's record names its dataset"
        )
    removed = Removed()
    evaluations = list(
        session.scalars(select(Evaluation).where(Evaluation.dataset_id == dataset.id))
    )
    _remove_evaluations(session, evaluations, removed)
    jobs = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset.id)))
    removed.folders += [job_dir(j) for j in jobs]
    removed.folders.append(dataset_dir(dataset.id))
    if jobs:
        # Parts first: a part names its parent job.
        session.execute(delete(Job).where(Job.id.in_(jobs), Job.parent_id.is_not(None)))
        session.execute(delete(Job).where(Job.id.in_(jobs)))
    session.execute(delete(Dataset).where(Dataset.id == dataset.id))
    return removed
